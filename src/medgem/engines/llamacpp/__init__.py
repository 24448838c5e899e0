"""The llama.cpp engine: GGUF weights and the mmproj vision projector, on any x86-64 CPU.

``engine`` (slots and the step loop), ``prompt`` (template, tokens, libmtmd chunks), ``memory``
(KV admission, the image-embedding cache), ``native`` (portable loading of the CPU backends),
``probe`` (the child-process proof that they run here), ``vision_torch`` (the tower in PyTorch),
``speeds`` (speeds measured here, for estimates before a run), ``kernels`` (the vision path,
tower precision and attention kernel, each measured here once), ``store`` (their JSON files), ``lora``, ``verify`` (a converted
GGUF loaded back and checked).
"""

from medgem.engines.llamacpp.engine import LlamaCppEngine

__all__ = ["LlamaCppEngine"]
