"""Non-causal attention written as blocked GEMMs, for vision towers on CPUs.

Why: PyTorch's CPU scaled-dot-product attention ran the SigLIP tower's 4,096-patch attention at
~171 GFLOP/s on an AVX512-BF16 CPU while the same tower's linear layers ran at ~920 GFLOP/s
(oneDNN GEMMs): attention was 70% of the tower's time for 38% of its FLOPs. Here QKᵀ and PV are
plain batched matmuls (oneDNN / MKL at GEMM speed, every head of a block of queries at once) and
the softmax runs per block between them, flash-style: a running maximum and sum per query row
when the keys are split into blocks, so the scores never exceed one block in memory.

Which is faster depends on the CPU (matrix units, cache sizes, threads), so nothing here picks
one: :func:`measure_attention` times the candidates once at the tower's own shape and
``medgem.engines.llamacpp.kernels`` keeps the winner per CPU.

A third candidate, where the CPU has AVX512-BF16 and the tower's precision allows bf16
attention (a bfloat16 or int8 tower, never a float32 one): ``flash-bf16``, medgem's own native
kernel (``engines.native``): QKᵀ and PV as register-blocked VDPBF16PS loops with fp32 scores,
at ~300 GFLOP/s where PyTorch's SDPA ran ~150 on a 2-core Zen 4.

Precision: QKᵀ runs in fp32 (Q and K cast up: bf16 scores doubled the error), the softmax, its
maximum and its sum are fp32, the probabilities go back to the input dtype for the PV GEMM (as
PyTorch's own CPU flash kernel does), and a split-key output is accumulated in fp32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from medgem.hardware import best_seconds

SDPA = "sdpa"
# tower precisions whose attention may run in bf16: the bf16 tower's own, and the int8 tower
# (its linears already cost more agreement than bf16 attention does)
BF16_ATTENTION_OK = ("bfloat16", "int8")


@dataclass(frozen=True)
class Blocking:
    """How blocked attention cuts the work: query rows per block, key rows per block (0: all)."""

    q_block: int
    kv_block: int = 0

    @property
    def name(self) -> str:
        return f"blocked-q{self.q_block}-kv{self.kv_block or 'all'}"

    @staticmethod
    def parse(name: str) -> Blocking | None:
        """The blocking a :attr:`name` stands for; None for "sdpa" or anything unknown."""
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "blocked" or not parts[1].startswith("q"):
            return None
        try:
            q_block = int(parts[1][1:])
            kv = parts[2][2:]
            return Blocking(q_block, 0 if kv == "all" else int(kv))
        except ValueError:
            return None


# What the one-time measurement tries besides SDPA: whole rows of scores (one softmax per block,
# no rescaling) at three block heights (32 rows x 16 heads x 4,096 keys in bf16 is 4 MiB: the
# scores stay in L2/L3 between the two GEMMs), and keys in blocks with the running max/sum.
CANDIDATES = (Blocking(32), Blocking(128), Blocking(512), Blocking(64, 1024))


def blocked_attention(query: Any, key: Any, value: Any, scale: float,
                      blocking: Blocking = CANDIDATES[1]) -> Any:
    """softmax(Q Kᵀ · scale) V without a mask, block by block.

    Args:
        query: (batch, heads, queries, head_dim).
        key, value: (batch, heads, keys, head_dim), same dtype as ``query``.
        scale: the factor on the scores (1/sqrt(head_dim) for SigLIP).
        blocking: block sizes (see :class:`Blocking`).

    Returns:
        (batch, heads, queries, head_dim) in the input dtype.
    """
    import torch

    dtype = query.dtype
    batch, heads, n_queries, head_dim = query.shape
    n_keys = key.shape[2]
    # Scores in fp32: bf16 scores (one rounding of each fp32 sum) doubled the error against
    # float32 attention (1.1% vs SDPA-bf16's 0.56% on unit-scale logits); fp32 scores match SDPA.
    # K is cast once per call (keys x head_dim values), Q once per block; the scale goes on Q.
    key_t = key.transpose(-1, -2).float()  # (batch, heads, head_dim, keys)
    out = torch.empty((batch, heads, n_queries, head_dim), dtype=dtype)
    kv_block = blocking.kv_block if 0 < blocking.kv_block < n_keys else n_keys
    for start in range(0, n_queries, blocking.q_block):
        stop = min(start + blocking.q_block, n_queries)
        q = query[:, :, start:stop].float().mul_(scale)  # (batch, heads, rows, head_dim)
        if kv_block == n_keys:  # every key at once: one softmax, no rescaling
            scores = torch.matmul(q, key_t)  # (batch, heads, rows, keys)
            probs = torch.softmax(scores, dim=-1).to(dtype)
            out[:, :, start:stop] = torch.matmul(probs, value)
            continue
        rows = stop - start
        total = torch.zeros((batch, heads, rows, head_dim), dtype=torch.float32)
        running_max = torch.full((batch, heads, rows, 1), float("-inf"), dtype=torch.float32)
        running_sum = torch.zeros((batch, heads, rows, 1), dtype=torch.float32)
        for k0 in range(0, n_keys, kv_block):
            k1 = min(k0 + kv_block, n_keys)
            scores = torch.matmul(q, key_t[..., k0:k1])  # (batch, heads, rows, block)
            block_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
            correction = torch.exp(running_max - block_max)  # 0 on the first block
            probs = scores.sub_(block_max).exp_()
            running_sum.mul_(correction).add_(probs.sum(dim=-1, keepdim=True))
            total.mul_(correction).add_(torch.matmul(probs.to(dtype), value[:, :, k0:k1]).float())
            running_max = block_max
        out[:, :, start:stop] = (total / running_sum).to(dtype)
    return out


def sdpa(query: Any, key: Any, value: Any, scale: float) -> Any:
    """PyTorch's own scaled-dot-product attention (the reference), same layout as above."""
    import torch

    return torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=scale)


def run_attention(choice: str, query: Any, key: Any, value: Any, scale: float) -> Any:
    """Attention by the name :func:`measure_attention` reports ("sdpa", "flash-bf16" or a
    blocking's name)."""
    from medgem.engines.native import FLASH, flash_attention

    if choice == FLASH:
        return flash_attention(query, key, value, scale)
    blocking = Blocking.parse(choice)
    if blocking is None:
        return sdpa(query, key, value, scale)
    return blocked_attention(query, key, value, scale, blocking)


def attention_flops(n_queries: int, n_keys: int, heads: int, head_dim: int) -> float:
    """Multiply-adds x 2 of QKᵀ and PV (the softmax's few operations per score not counted)."""
    return 4.0 * n_queries * n_keys * heads * head_dim


def measure_attention(tokens: int, heads: int, head_dim: int, dtype: str,
                      query_rows: int = 512, repeats: int = 3,
                      ) -> dict[str, float]:
    """Seconds per call of every candidate at the tower's shape, bounded in work.

    The keys are the tower's own count (``tokens``), every head runs; only the queries are cut
    to ``query_rows`` (each query row costs the same, so the ranking holds for the whole layer).
    Best of ``repeats`` after one warm-up call each. ``dtype``: the tower's precision
    ("float32", "bfloat16", or "int8", whose attention runs on float32 tensors); the native
    bf16 kernel is a candidate for the last two where it runs on this CPU.

    Returns:
        {"sdpa": s, "blocked-q64-kvall": s, ..., "flash-bf16": s where it is a candidate}.
    """
    import torch

    from medgem.engines.native import FLASH, flash_available

    torch_dtype = torch.float32 if dtype == "int8" else getattr(torch, dtype)
    names = [SDPA, *(c.name for c in CANDIDATES)]
    if dtype in BF16_ATTENTION_OK and flash_available():
        names.append(FLASH)
    generator = torch.Generator().manual_seed(0)
    rows = min(query_rows, tokens)
    query = torch.randn((1, heads, rows, head_dim), generator=generator).to(torch_dtype)
    key = torch.randn((1, heads, tokens, head_dim), generator=generator).to(torch_dtype)
    value = torch.randn((1, heads, tokens, head_dim), generator=generator).to(torch_dtype)
    scale = head_dim ** -0.5
    times: dict[str, float] = {}
    with torch.inference_mode():
        for name in names:
            call = functools.partial(run_attention, name, query, key, value, scale)
            times[name] = best_seconds(call, repeats)
    return times
