"""llama.cpp engine: GGUF weights (Q4_K_M, Q8_0, f16) and the mmproj vision projector, on CPU.

Drives llama-cpp-python's low-level API directly rather than its chat handlers, for three
reasons: the handlers clear the KV cache on every call (a follow-up about the same image would
run the vision tower again), they sample with repetition penalties (greedy here must equal
transformers' greedy), and they detokenize without special tokens (MedGemma's thinking markers
``<unused94>``/``<unused95>`` are control tokens and would vanish).

The prompt side (chat template, libmtmd chunks) is in ``prompt``. The context is kept
between requests: the longest common prefix of units (text tokens, and images by pixel digest)
stays in each slot's KV cache and only the rest is evaluated.
"""

from __future__ import annotations

import codecs
import ctypes
import importlib.util
import logging
import threading
import time
from collections.abc import Iterator

import numpy as np

from medgem.engines.base import (
    Capabilities,
    EngineEvent,
    Finished,
    FinishReason,
    ModelInfo,
    Prepared,
    TextDelta,
    Timings,
    Usage,
    as_prepared,
)
from medgem.engines.gguf.read import (
    check_mmproj,
    check_model,
    file_type_name,
    read_header,
)
from medgem.engines.grammar import Grammars, allowed_tokens, allows
from medgem.engines.llamacpp import speeds
from medgem.engines.llamacpp.memory import check_kv_memory
from medgem.engines.llamacpp.native import (
    import_llama_cpp,
    llama_context_params,
    llama_model_params,
)
from medgem.engines.llamacpp.prompt import Prompt, PromptBuilder, Unit
from medgem.engines.llamacpp.sampling import Vocab, sampler_chain
from medgem.engines.llamacpp.sequence import Sequence, Slot
from medgem.engines.llamacpp.vision import Vision
from medgem.engines.options import LlamaCppOptions
from medgem.errors import (
    ContextLengthError,
    EngineUnavailableError,
    InputError,
    NotACheckpointError,
    ResourceError,
)
from medgem.hardware import usable_cores
from medgem.request import Request
from medgem.request.compose import shipped_chat_template
from medgem.request.variants import GEMMA3_CONTEXT
from medgem.resolve import Checkpoint

stages = logging.getLogger("medgem.progress")  # a terminal's stage line shows these

DEFAULT_N_CTX = 8192
# One KV buffer for every sequence (llama-server's default): decode of 4 streams on the 4B shape
# went from 1.29x to 1.76x one stream's tok/s against a buffer per sequence (Zen 5, 2 cores).
# It was once turned off because a batched eval's answer changed from its first token. Why: a
# sequence's cells then sit among other sequences' (masked) cells, and where they sit changes
# the order of flash attention's sums, so logits move by rounding -- llama.cpp's own finding
# (ggml-org/llama.cpp#4113, #7347: "the insertion of masked values ... changes the rounding
# error"). It is the batch-kernel rounding the engine tests already bound, not a wrong cache:
# greedy answers leave the serial ones only at near ties (tests/test_batching.py checks both
# layouts, first token included, against float32 logits). kv_unified=False gives a buffer each.
DEFAULT_KV_UNIFIED = True


class LlamaCppEngine:
    """MedGemma / Gemma 3 GGUF on llama.cpp, with a vision projector for images."""

    name = "llamacpp"

    def __init__(self, checkpoint: Checkpoint, options: LlamaCppOptions) -> None:
        if checkpoint.format != "gguf":
            raise InputError(
                f"'{checkpoint.path.name}' is not a GGUF file; llama.cpp needs one",
                "convert the checkpoint first: medgem convert CHECKPOINT --quant q4_k_m, "
                "or use --engine hf",
            )
        header = read_header(checkpoint.path)
        check_model(header)
        self._embd = int(header.get("gemma3.embedding_length", 0))
        self._window = int(header.get("gemma3.attention.sliding_window", 0) or 1 << 30)
        self.image_size = 0
        if checkpoint.mmproj is not None:
            self.image_size = check_mmproj(read_header(checkpoint.mmproj, "vision projector"), self._embd)
        if options.probe:  # a child process proves the kernels run on this CPU first
            from medgem.engines.llamacpp.probe import ensure_runs_here

            ensure_runs_here(cpu_variant=options.cpu_variant, repack=options.repack)
        llama_cpp, mtmd = import_llama_cpp(options.cpu_variant, logs=options.native_logs)
        self._llama_cpp = llama_cpp
        self._mtmd = mtmd
        self.checkpoint = checkpoint
        self._lock = threading.Lock()  # one generate() at a time (the batcher runs several)
        threads = options.threads or usable_cores()
        context_length = int(header.get("gemma3.context_length", GEMMA3_CONTEXT))
        self.n_ctx = min(options.n_ctx or DEFAULT_N_CTX, context_length)  # per sequence
        self.n_batch = 512
        parallel = max(1, options.parallel)
        if options.check_memory:
            check_kv_memory(header, checkpoint.path, self.n_ctx, parallel, self.n_batch)
        # No mmap: llama.cpp repacks the weights for its CPU kernels, and with mmap both copies
        # count (5.0 GB RSS for Q4_K_M 4B vs 3.6 GB). Flash attention: faster prefill and decode
        # on CPUs (measured 42 vs 32 tok/s prefill on a 4B shape).
        self._model = llama_cpp.llama_model_load_from_file(
            str(checkpoint.path).encode(), llama_model_params(llama_cpp, repack=options.repack))
        if not self._model:
            raise NotACheckpointError(
                f"llama.cpp could not load '{checkpoint.path.name}'",
                "the file is corrupt, incomplete or from a newer llama.cpp: convert or download "
                "it again",
            )
        self.kv_unified = DEFAULT_KV_UNIFIED if options.kv_unified is None else options.kv_unified
        self._ctx = llama_cpp.llama_init_from_model(
            self._model,
            llama_context_params(llama_cpp, self.n_ctx * parallel, self.n_batch, threads, parallel,
                                 unified=self.kv_unified))
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise ResourceError(
                f"llama.cpp could not allocate a {self.n_ctx}-token context",
                "lower --n-ctx, or free memory",
            )
        # One KV sequence per request in flight; each slot gets n_ctx of its own.
        self._slots = [Slot(seq_id) for seq_id in range(parallel)]
        self._llama_batch = llama_cpp.llama_batch_init(max(self.n_batch, parallel), 0, 1)
        adapter: tuple[str, str] | None = None
        if header.get("medgem.adapter.sha256"):  # a model GGUF with an adapter merged in
            adapter = (str(header.get("medgem.adapter.name")), str(header.get("medgem.adapter.sha256")))
        if options.adapter:  # a GGUF LoRA from `medgem convert --adapter`, before any decode
            from medgem.engines.llamacpp.lora import apply_lora, load_lora, lora_identity

            try:
                adapter = lora_identity(options.adapter)
                apply_lora(self._ctx, load_lora(self._model, options.adapter))
            except Exception:
                self._free_model()
                raise
        self._vocab = Vocab(llama_cpp, llama_cpp.llama_model_get_vocab(self._model))
        self._vision: Vision | None = None
        if checkpoint.mmproj is not None:
            try:
                self._vision = Vision(llama_cpp, mtmd, self._model, checkpoint.mmproj, options, threads,
                                      self._embd)
            except Exception:
                self._free_model()
                raise
        self._speed_key = speeds.speed_key(
            checkpoint.path, checkpoint.mmproj,
            speeds.vision_label(self._vision.path, self._vision.dtype) if self._vision else "none", threads)
        template = header.get("tokenizer.chat_template")
        if not isinstance(template, str) or not template:
            template = shipped_chat_template()
        self._prompts = PromptBuilder(llama_cpp, mtmd, self._vocab.handle,
                                      self._vision.ctx if self._vision else None, template,
                                      self.image_size, checkpoint.path.name,
                                      self._vision.lock if self._vision else threading.Lock())
        self.tokenize = self._prompts.tokenize
        self.render = self._prompts.render
        self.last_prompt_tokens: list[int] = []  # the last prompt (-1 for image positions)
        self.last_tokens: list[int] = []  # the last answer's token ids (for checks and tests)
        markers = (self._token_id("<unused94>"), self._token_id("<unused95>"))
        self._thinking_ids = {token for token in markers if token >= 0}
        self._grammars = Grammars(self._vocab.lltokenizer, *markers)
        file_type = file_type_name(int(header.get("general.file_type", -1)))
        variant = checkpoint.variant
        demo_id = str(header.get("medgem.demo", ""))
        name = str(header.get("general.name", ""))
        self.info = ModelInfo(
            # `medgem convert` writes model.gguf: the model's own name says more than the file's.
            id=demo_id or (name if checkpoint.model_id == "model" and name else checkpoint.model_id),
            revision=checkpoint.revision,
            variant=variant.key if variant else None,
            engine=self.name,
            dtype=file_type,
            quantization=None if file_type in ("f16", "bf16", "f32") else file_type,
            demo=checkpoint.demo or bool(demo_id),
            context_length=self.n_ctx,  # the window this engine holds, not the model's maximum
            path=str(checkpoint.path),
            adapter=adapter[0] if adapter else None,
            adapter_sha256=adapter[1] if adapter else None,
        )
        self.capabilities = Capabilities(
            images=self._vision is not None, batching="continuous",
            constrained=importlib.util.find_spec("llguidance") is not None,
            context_up_to=context_length if context_length > self.n_ctx else None)

    @property
    def vision(self) -> tuple[str, str]:
        """The vision path this engine runs and why (``kernels.choose_vision``)."""
        return self._vision.choice if self._vision else ("none", "no vision projector")

    # --- tokens --------------------------------------------------------------------------------

    def _token_id(self, text: str) -> int:
        ids = self.tokenize(text)
        return ids[0] if len(ids) == 1 else -1

    def _piece(self, token: int) -> bytes:
        # Control tokens render as nothing unless asked for; the thinking markers must survive.
        return self._vocab.piece(token, special=token in self._thinking_ids)

    def prepare(self, request: Request) -> Prepared:
        """Render and tokenize once (libmtmd preprocesses and hashes the images here)."""
        if request.options.constraint is not None:  # a schema llguidance refuses fails here
            self._grammars.compile(request.options.constraint)
        prompt = self._prompts.build(request)
        return Prepared(request, len(prompt.tokens), prompt, lambda: self._prompts.free(prompt))

    # --- slots: one KV-cache sequence per request in flight -----------------------------------

    def _reusable(self, slot: Slot, units: list[Unit]) -> int:
        """How many leading units ``slot`` already holds (at least one left to evaluate)."""
        common = 0
        for cached, new in zip(slot.cached, units, strict=False):
            if cached != new:
                break
            common += 1
        return min(common, len(units) - 1)

    def _truncate(self, slot: Slot, keep_units: int) -> int:
        """Drop the slot's cache after ``keep_units``; returns the positions kept (0: cleared)."""
        lib = self._llama_cpp
        memory = lib.llama_get_memory(self._ctx)
        keep = sum(unit.n_pos for unit in slot.cached[:keep_units])
        # Sliding-window layers must still hold the window before the cut.
        if (keep > 0 and lib.llama_memory_seq_rm(memory, slot.seq_id, keep, -1)
                and lib.llama_memory_seq_pos_min(memory, slot.seq_id) <= max(0, keep - self._window)):
            slot.cached = slot.cached[:keep_units]
            return keep
        self._clear(slot)
        return 0

    def _clear(self, slot: Slot) -> None:
        lib = self._llama_cpp
        lib.llama_memory_seq_rm(lib.llama_get_memory(self._ctx), slot.seq_id, -1, -1)
        slot.cached = []

    def start(self, prepared: Prepared, cancel: threading.Event | None = None,
              started: float | None = None) -> Sequence:
        """Put a prepared request in a free slot: the one whose cache shares the longest prefix
        with it (a follow-up about the same image skips the vision tower). Nothing runs yet:
        :meth:`step` prefills and decodes.

        Raises:
            ContextLengthError: the prompt does not fit a slot's context.
            ResourceError: every slot is taken.
        """
        prompt: Prompt = prepared.state
        n_prompt = prompt.n_pos
        if n_prompt + 1 > self.n_ctx:
            raise ContextLengthError(
                f"the prompt takes {n_prompt} tokens but the context holds {self.n_ctx}",
                "shorten the prompt (fewer images or slices), or raise --n-ctx",
            )
        free = [slot for slot in self._slots if slot.sequence is None]
        if not free:
            raise ResourceError(f"all {len(self._slots)} llama.cpp slots are taken",
                                "wait for a request to finish, or raise --parallel")
        slot = max(free, key=lambda s: self._reusable(s, prompt.units))
        reused = self._truncate(slot, self._reusable(slot, prompt.units))
        options = prepared.request.options
        sequence = Sequence(
            prepared=prepared, prompt=prompt, slot=slot, cancel=cancel,
            started=time.perf_counter() if started is None else started,
            sampler=sampler_chain(self._llama_cpp, options), budget=min(options.budget, self.n_ctx - n_prompt),
            reused=reused, position=reused, next_unit=len(slot.cached),
            decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"),
            guide=self._grammars.guide(options.constraint, options.think),
        )
        slot.sequence = sequence
        self.last_prompt_tokens = prompt.tokens
        self.last_tokens = sequence.tokens
        return sequence

    def step(self, sequences: list[Sequence]) -> None:
        """One step for the running sequences, llama-server's way: one ``llama_decode`` with the
        next token of every decoding sequence and, in the room left of ``n_batch``, the next
        text piece of each prefilling one (oldest first), so a new question neither stalls the
        others' answers nor waits for a step of its own. An image (the vision tower, then its
        soft tokens through libmtmd's own non-causal decode) runs after the batch: the oldest
        prompt's that waits on one, one image per step.
        Events (and errors) collect on each sequence; ``done`` marks the finished ones."""
        for sequence in sequences:
            if not sequence.done and sequence.cancel is not None and sequence.cancel.is_set():
                self._finish(sequence, "cancelled")
        decoding = [s for s in sequences if not s.done and s.pending is not None]
        pieces: list[tuple[Sequence, int, int]] = []  # (sequence, first unit, end unit)
        room = self.n_batch - len(decoding)
        image: Sequence | None = None
        for sequence in (s for s in sequences if not s.done and s.prefilling):
            units, first = sequence.prompt.units, sequence.next_unit
            if not isinstance(units[first].key, int):
                image = image or sequence  # the oldest waiting image; the others next steps
                continue
            if room <= 0:
                continue
            last = first
            while last < len(units) and isinstance(units[last].key, int) and last - first < room:
                last += 1
            pieces.append((sequence, first, last))
            room -= last - first
        if decoding or pieces:
            self._decode_batch(decoding, pieces)
        if image is not None and not image.done:
            self._prefill_image(image)

    def _batch(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """llama_decode one batch of (token, position, sequence id, wants logits)."""
        lib = self._llama_cpp
        batch = self._llama_batch
        for index, (token, position, seq_id, logits) in enumerate(entries):
            batch.token[index] = token
            batch.pos[index] = position
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = seq_id
            batch.logits[index] = logits
        batch.n_tokens = len(entries)
        status = lib.llama_decode(self._ctx, batch)
        if status != 0:
            raise EngineUnavailableError(f"llama.cpp failed to evaluate the prompt (status {status})",
                                         "retry with a shorter prompt")

    def _decode_batch(self, decoding: list[Sequence], pieces: list[tuple[Sequence, int, int]]) -> None:
        """One llama_decode: the decoding sequences' pending tokens, then the prefill pieces;
        logits for every decoded token and for the last token of a prompt that ends here."""
        entries = [(s.pending, s.position, s.slot.seq_id, True) for s in decoding]
        ends: list[int | None] = []  # per piece: the batch row of its prompt's last token
        for sequence, first, last in pieces:
            units = sequence.prompt.units
            if stages.isEnabledFor(logging.DEBUG):
                stages.debug(f"reading the prompt ({sum(isinstance(u.key, int) for u in units)} tokens)")
            ending = last == len(units)
            entries += [(int(units[i].key), sequence.position + i - first, sequence.slot.seq_id,
                         ending and i == last - 1) for i in range(first, last)]
            ends.append(len(entries) - 1 if ending else None)
        began = time.perf_counter()
        try:
            self._batch(entries)  # type: ignore[arg-type]
        except EngineUnavailableError as exc:
            for sequence in [*decoding, *(piece[0] for piece in pieces)]:
                self._fail(sequence, exc)
            return
        elapsed = time.perf_counter() - began
        for index, sequence in enumerate(decoding):
            assert sequence.pending is not None
            sequence.slot.cached.append(Unit(sequence.pending, 1))
            sequence.position += 1
            sequence.pending = None
            self._accept(sequence, self._sample(sequence, index))
        for (sequence, first, last), row in zip(pieces, ends, strict=True):
            sequence.position += last - first
            # The prefill rate is timed on batches of one prompt's piece alone (see speeds).
            if len(pieces) == 1 and not decoding and last - first >= 32:
                self._timed(sequence, sequence.position - (last - first), last - first, elapsed)
            self._prefilled(sequence, first, last, row)

    def _prefill_image(self, sequence: Sequence) -> None:
        """The next unit of a prompt, an image: its soft tokens into the sequence."""
        units = sequence.prompt.units
        first = sequence.next_unit
        if stages.isEnabledFor(logging.DEBUG):
            images = [i for i, unit in enumerate(units) if not isinstance(unit.key, int)]
            stages.debug(f"encoding image {images.index(first) + 1}/{len(images)}")
        try:
            self._image(sequence, first)
        except EngineUnavailableError as exc:
            self._fail(sequence, exc)
            return
        self._prefilled(sequence, first, first + 1, -1)

    def _prefilled(self, sequence: Sequence, first: int, last: int, row: int | None) -> None:
        """Units ``first``..``last`` are in the KV cache; at the prompt's end, the first token
        (sampled from batch row ``row``; -1: the last decode's last output)."""
        sequence.slot.cached.extend(sequence.prompt.units[first:last])
        sequence.next_unit = last
        if sequence.prefilling:
            return
        sequence.prefill_s = time.perf_counter() - sequence.started
        if sequence.budget <= 0:
            self._finish(sequence, "length")
        elif sequence.cancel is not None and sequence.cancel.is_set():
            self._finish(sequence, "cancelled")
        else:
            self._accept(sequence, self._sample(sequence, -1 if row is None else row))

    def _timed(self, sequence: Sequence, position: int, tokens: int, seconds: float) -> None:
        """Count ``tokens`` from ``position`` on, decoded alone in ``seconds``, into the
        sequence's prefill figures (speeds keeps the rate, and how long prompts slow it)."""
        sequence.lm_tokens += tokens
        sequence.lm_s += seconds
        sequence.lm_work += speeds.attention_work(position, position + tokens, self._window)

    def _image(self, sequence: Sequence, unit_index: int) -> None:
        """An image's soft tokens into the sequence: from the embedding cache when these pixels
        were encoded before (any slot, any conversation), else through the vision tower."""
        mtmd, vision = self._mtmd, self._vision
        assert vision is not None  # a prompt has images only where a projector is loaded
        prompt = sequence.prompt
        chunk = mtmd.mtmd_input_chunks_get(prompt.chunks, prompt.chunk_of_unit[unit_index][0])
        key = str(prompt.units[unit_index].key)
        embeddings, seconds = vision.embeddings(chunk, key, prompt.pixels[key])
        if seconds is None:
            sequence.images_cached += 1
        else:
            sequence.vision_s += seconds
            sequence.images_encoded += 1
        new_position = self._llama_cpp.llama_pos(0)
        began = time.perf_counter()
        # the image's soft tokens through the language model (non-causal)
        status = mtmd.mtmd_helper_decode_image_chunk(
            vision.ctx, self._ctx, chunk, embeddings,
            sequence.position, sequence.slot.seq_id, self.n_batch, ctypes.byref(new_position),
            mtmd.mtmd_helper_post_decode_callback(), None,
        )
        self._timed(sequence, sequence.position, int(mtmd.mtmd_input_chunk_get_n_tokens(chunk)),
                    time.perf_counter() - began)
        if status != 0:
            raise EngineUnavailableError(f"llama.cpp failed to encode an image (status {status})",
                                         "check the image and the mmproj file")
        sequence.position = int(new_position.value)

    def _accept(self, sequence: Sequence, token: int) -> None:
        """A sampled token: end of turn, or text out and the token decoded in the next step."""
        sequence.tokens.append(token)
        if sequence.first is None:
            sequence.first = time.perf_counter() - sequence.started
        if self._vocab.is_end(token):
            self._finish(sequence, "stop")
            return
        if sequence.guide is not None:
            sequence.guide.accept(token)
        text = sequence.decoder.decode(self._piece(token))
        if text:
            sequence.events.append(TextDelta(text))
        if len(sequence.tokens) >= sequence.budget:
            self._finish(sequence, "length")
        else:
            sequence.pending = token

    def _finish(self, sequence: Sequence, reason: FinishReason) -> None:
        tail = sequence.decoder.decode(b"", final=True)
        if tail:
            sequence.events.append(TextDelta(tail))
        total = time.perf_counter() - sequence.started
        generated = len(sequence.tokens)
        sequence.events.append(Finished(
            reason,
            Usage(sequence.prompt.n_pos, generated),
            Timings(sequence.first if sequence.first is not None else total, total, generated),
            extra={"reused_prompt_tokens": float(sequence.reused), "vision_s": sequence.vision_s,
                   "images_cached": float(sequence.images_cached),
                   "prefill_s": sequence.prefill_s or total},
        ))
        if sequence.images_encoded or sequence.lm_tokens:
            speeds.record(self._speed_key,
                          sequence.vision_s / sequence.images_encoded if sequence.images_encoded else None,
                          sequence.lm_tokens / sequence.lm_s if sequence.lm_s > 0 else None,
                          prefill=speeds.LongPrefill(sequence.lm_tokens, sequence.lm_work,
                                                     sequence.lm_s, self._window))
        self._release(sequence)

    def abandon(self, sequence: Sequence) -> None:
        """Drop a sequence after an engine fault: its cache cleared, its slot freed."""
        if not sequence.done:
            self._clear(sequence.slot)
            self._release(sequence)

    def _fail(self, sequence: Sequence, error: BaseException) -> None:
        self._clear(sequence.slot)
        sequence.events.append(error)
        self._release(sequence)

    def _release(self, sequence: Sequence) -> None:
        sequence.done = True
        sequence.pending = None
        if sequence.sampler is not None:
            self._llama_cpp.llama_sampler_free(sequence.sampler)
            sequence.sampler = None
        sequence.slot.sequence = None
        sequence.prepared.release()

    # --- generation ----------------------------------------------------------------------------

    def _sample(self, sequence: Sequence, index: int) -> int:
        """Draw the next token from the logits of batch entry ``index`` (-1: the last), with a
        constrained sequence's disallowed tokens masked out first (in place, in llama.cpp's
        own logits buffer, which its sampler chain then reads). Greedy: when the best token is
        allowed already the buffer is left as it is (the same draw, without the full mask)."""
        lib = self._llama_cpp
        guide = sequence.guide
        if guide is not None and guide.constrains:
            mask = self._grammars.bitmask(1)
            guide.fill(mask, 0)
            # shape: (n_vocab,) float32, a view of llama.cpp's buffer
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, index), shape=(self._vocab.size,))
            if not (sequence.prepared.request.options.greedy and allows(mask[0], int(logits.argmax()))):
                logits[~allowed_tokens(mask[0], logits.shape[0])] = -np.inf  # in place
        return int(lib.llama_sampler_sample(sequence.sampler, self._ctx, index))

    def generate(self, request: Request | Prepared,
                 cancel: threading.Event | None = None) -> Iterator[EngineEvent]:
        """One request on its own: the step loop of :meth:`start`/:meth:`step` for a single
        sequence (``medgem.engines.batching`` runs several)."""
        started = time.perf_counter()
        prepared = as_prepared(self, request)
        try:
            with self._lock:
                sequence = self.start(prepared, cancel, started)
                try:
                    while not sequence.done:
                        self.step([sequence])
                        yield from sequence.take()
                finally:
                    if not sequence.done:  # the caller stopped reading
                        self._finish(sequence, "cancelled")
        finally:
            prepared.release()

    def health(self) -> dict[str, object]:
        return {}

    def close(self) -> None:
        if self._vision is not None:
            self._vision.close()
        self._free_model()

    def _free_model(self) -> None:
        if getattr(self, "_llama_batch", None) is not None:
            self._llama_cpp.llama_batch_free(self._llama_batch)
            self._llama_batch = None
        if self._ctx:
            self._llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            self._llama_cpp.llama_model_free(self._model)
            self._model = None
