"""Speeds this machine has measured, kept so that a long job can be estimated before it runs.

The llama.cpp engine records, per model file and vision path, what each image question cost:
seconds in the vision tower per image, and the language model's prefill rate (tokens/s, from
single-sequence prefill batches, so other requests in a batch do not skew it), and the longest
prefill run here with the keys its tokens attended, so a long prompt's slowdown carries into
long estimates (:class:`LongPrefill`). ``medgem
inspect --model M`` reads them to say how long a CT volume will take to its first token on this
machine. Figures come only from runs here (nothing is assumed from another CPU); the store is a
small JSON file in the medgem cache (``$MEDGEM_CACHE``), median of the last few runs per figure.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from medgem.config import cache_dir
from medgem.engines.llamacpp.kernels import choose_vision, kept_tower_dtype
from medgem.engines.llamacpp.store import read_store, store_lock, write_store
from medgem.hardware import cpu_name, usable_cores

KEEP = 5  # runs kept per figure; the median of them is reported


def store_path() -> Path:
    return cache_dir() / "speeds.json"


def speed_key(model: Path, mmproj: Path | None, vision: str, threads: int) -> str:
    """What a figure depends on: the files (name and size), where the tower runs, the CPU and
    how many threads it had."""
    def ident(path: Path | None) -> str:
        return f"{path.name}:{path.stat().st_size}" if path is not None and path.exists() else "-"

    return f"{ident(model)}|{ident(mmproj)}|{vision}|{threads}t|{cpu_name()}"


def vision_label(path: str, torch_dtype: str | None) -> str:
    """Where the tower runs as the speeds store keys it: PyTorch's figures per precision (an
    int8 tower and a float32 one are different speeds), the clip's as "llamacpp"."""
    return f"torch-{torch_dtype}" if path == "torch" and torch_dtype else path


# Gemma 3 (MedGemma): of every six decoder layers five attend to a sliding window and one to the
# whole prompt (llama.cpp's gemma3 SWA pattern); what a prompt token's attention costs follows.
GLOBAL_LAYER_SHARE = 1 / 6
# A prompt counts as long, and its prefill is kept to learn how prefill slows with length, from
# this many windows on: below, the global layers' share of the work is too small to measure.
LONG_PROMPT_WINDOWS = 4


def attention_work(start: int, end: int, window: int) -> float:
    """Keys attended while prefilling positions ``start`` to ``end``, per layer on average: a
    global layer attends every earlier position, a local one the last ``window`` (the sum of
    ``p * GLOBAL_LAYER_SHARE + min(p, window) * (1 - GLOBAL_LAYER_SHARE)`` over the positions)."""
    def upto(n: int) -> float:
        full = n * (n - 1) / 2
        inside = min(n, window)
        local = inside * (inside - 1) / 2 + max(0, n - window) * window
        return full * GLOBAL_LAYER_SHARE + local * (1 - GLOBAL_LAYER_SHARE)

    return upto(end) - upto(start)


@dataclass(frozen=True)
class LongPrefill:
    """The longest prefill kept: ``tokens`` timed through the language model in ``seconds``,
    attending ``work`` keys per layer on average (:func:`attention_work` over their positions),
    the model's sliding ``window``: how much slower than the short prompts' rate a long one ran."""

    tokens: int
    work: float
    seconds: float
    window: int


@dataclass(frozen=True)
class Speeds:
    """The figures kept for one key (the last ``KEEP`` runs each); the estimate takes their
    median, the range their extremes."""

    vision_runs: tuple[float, ...]  # tower seconds per image
    prefill_runs: tuple[float, ...]  # prefill tokens per second
    measured_on: str
    long_prefill: LongPrefill | None = None

    @property
    def vision_s_per_image(self) -> float | None:
        return statistics.median(self.vision_runs) if self.vision_runs else None

    @property
    def prefill_tokens_per_s(self) -> float | None:
        return statistics.median(self.prefill_runs) if self.prefill_runs else None

    @property
    def runs(self) -> int:
        return max(len(self.vision_runs), len(self.prefill_runs))

    def seconds_per_attended_key(self, rate: float | None = None) -> float:
        """What prefill spends per key attended beyond the per-token cost the kept rate
        (``rate``, else the median) already holds: learned from the longest prompt kept; 0
        without one, or where it ran no slower a token than the questions (a tiny model, whose
        short prompts are mostly a batch's fixed cost). A volume's prompt attends ~20x more keys per token than a question's
        (85 slices, ~22,800 tokens, against ~300). Measured (4B Q4_K_M, Zen 4, 2 cores, short
        prompts at 38.7 tokens/s): an 85-slice volume prefilled at 31.1 (733 s; the rate alone
        said 589), a 20-slice one (5,120 tokens) at 38.6. So the slowdown comes late: learned
        from a 20-slice volume it adds ~nothing at 85; learned from an 85-slice one it repeats
        that volume and puts a 20-slice prefill ~10% over (the work's share there is 0.4 of
        85 slices'). The long prompt kept is the longest one asked here, where it matters."""
        rate = rate or self.prefill_tokens_per_s
        long = self.long_prefill
        if long is None or not rate:
            return 0.0
        return max(0.0, (long.seconds - long.tokens / rate) / long.work) if long.work > 0 else 0.0

    def prefill_s(self, tokens: int, rate: float | None = None) -> float | None:
        """Seconds to prefill a prompt of ``tokens`` from position 0 at ``rate`` tokens/s (else
        the median kept), with the slowdown a long prompt showed here."""
        rate = rate or self.prefill_tokens_per_s
        if not rate:
            return None
        long = self.long_prefill
        extra = self.seconds_per_attended_key(rate) * attention_work(0, tokens, long.window) if long else 0.0
        return tokens / rate + extra

    def first_token_s(self, images: int, tokens_per_image: int, text_tokens: int) -> float | None:
        """Seconds to the first token: every image through the tower, then every prompt token
        (the images' soft tokens included) through the language model's prefill."""
        return self._first_token(self.vision_s_per_image, self.prefill_tokens_per_s, images,
                                 tokens_per_image, text_tokens)

    def first_token_range(self, images: int, tokens_per_image: int,
                          text_tokens: int) -> tuple[float, float] | None:
        """(low, high) seconds to the first token: the fastest kept tower with the fastest kept
        prefill, and the slowest with the slowest; None from fewer than two runs. The same work
        was measured up to 1.6x apart within one process on a shared 2-core VM
        (benchmarks/results/cpu-speed-avx2.txt, Run 7): one run is a point of a spread."""
        if self.runs < 2:
            return None
        vision, prefill = self.vision_runs, self.prefill_runs
        low = self._first_token(min(vision, default=None), max(prefill, default=None), images,
                                tokens_per_image, text_tokens)
        high = self._first_token(max(vision, default=None), min(prefill, default=None), images,
                                 tokens_per_image, text_tokens)
        return (low, high) if low is not None and high is not None else None

    def _first_token(self, vision_s: float | None, rate: float | None, images: int,
                     tokens_per_image: int, text_tokens: int) -> float | None:
        if rate is None or (images and vision_s is None):
            return None
        prefill = self.prefill_s(images * tokens_per_image + text_tokens, rate) or 0.0
        return images * (vision_s or 0.0) + prefill


def record(key: str, vision_s_per_image: float | None = None,
           prefill_tokens_per_s: float | None = None, path: Path | None = None,
           prefill: LongPrefill | None = None) -> None:
    """Add one run's figures (best effort: an unwritable cache never fails a request).
    ``prefill``: the run's timed prefill, kept as the long one when it held
    ``LONG_PROMPT_WINDOWS`` windows' tokens and at least half the kept one's (so a newer long
    run replaces an older one of its size, and short questions never do)."""
    path = path or store_path()
    with store_lock:
        data = read_store(path)
        entry = data.setdefault(key, {"vision": [], "prefill": []})
        for name, value in (("vision", vision_s_per_image), ("prefill", prefill_tokens_per_s)):
            if value is not None and value > 0:
                entry[name] = ([*entry.get(name, []), round(value, 4)])[-KEEP:]
        if prefill is not None:
            kept = _long_prefill(entry.get("long_prefill"))
            if (prefill.seconds > 0 and prefill.tokens >= LONG_PROMPT_WINDOWS * prefill.window
                    and (kept is None or prefill.tokens >= kept.tokens / 2)):
                entry["long_prefill"] = [prefill.tokens, round(prefill.work), round(prefill.seconds, 4),
                                         prefill.window]
        entry["date"] = date.today().isoformat()
        write_store(path, data)


def lookup(key: str, path: Path | None = None) -> Speeds | None:
    """The figures measured for ``key`` on this machine, or None."""
    entry = read_store(path or store_path()).get(key)
    if not entry:
        return None
    return Speeds(tuple(entry.get("vision", [])), tuple(entry.get("prefill", [])),
                  str(entry.get("date", "")), _long_prefill(entry.get("long_prefill")))


def _long_prefill(kept: Any) -> LongPrefill | None:
    """A kept long prefill, or None where there is none or it is malformed (a store by hand)."""
    try:
        tokens, work, seconds, window = kept
        return LongPrefill(int(tokens), float(work), float(seconds), int(window))
    except (TypeError, ValueError):
        return None


def measured_keys(path: Path | None = None) -> list[str]:
    """Every key with figures in the store."""
    return sorted(read_store(path or store_path()))


def estimate_first_token(model: Path, mmproj: Path | None, images: int, text_tokens: int = 64,
                         threads: int | None = None, vision: str | None = None,
                         path: Path | None = None, vision_dtype: str | None = None
                         ) -> tuple[float | None, Speeds | None]:
    """Seconds to the first token for ``images`` images and ~``text_tokens`` of text with this
    GGUF on this machine, from the figures measured here (for PyTorch's tower, those of the
    precision it would run in): (None, None) when none were."""
    threads = threads or usable_cores()
    where = choose_vision(vision)[0] if mmproj is not None else "none"
    if where == "torch":
        where = vision_label(where, kept_tower_dtype(threads, vision_dtype, path))
    measured = lookup(speed_key(model, mmproj, where, threads), path)
    if measured is None:
        return None, None
    return measured.first_token_s(images, soft_tokens_per_image(mmproj), text_tokens), measured


def soft_tokens_per_image(mmproj: Path | None) -> int:
    """How many soft tokens the projector gives one image (256 for MedGemma's), 0 without one."""
    from medgem.engines.gguf.read import read_header

    if mmproj is None:
        return 0
    header = read_header(mmproj, "vision projector")
    side = int(header.get("clip.vision.image_size", 0)) // int(header.get("clip.vision.patch_size", 1))
    return (side // int(header.get("clip.vision.projector.scale_factor", 1))) ** 2


def text_tokens(text: str, markers: int = 0) -> int:
    """About how many tokens a prompt's text takes before it is tokenized: ``text`` (the
    question, instruction and system prompt) at ~3 bytes a token, rounded up, the chat template's
    turns (64), and ``markers`` "SLICE n" labels of a volume (4 each)."""
    return len(text.encode()) // 3 + 64 + 4 * markers


def prompt_tokens(mmproj: Path | None, images: int, text_tokens: int) -> int:
    """A prompt's length before it is tokenized: each image's soft tokens with the markers
    around them (start and end of image, a blank line each side: 6), and ``text_tokens``. An
    85-slice volume of MedGemma 1.5 measured 22,470 tokens: 85 x 262 and the text."""
    return images * (soft_tokens_per_image(mmproj) + 6) + text_tokens


@dataclass(frozen=True)
class ContextNeed:
    """What llama.cpp's context must hold for a prompt of images and text and its answer."""

    prompt: int  # the prompt's tokens (:func:`prompt_tokens`)
    with_answer: int  # and the answer's budget
    window: int  # the model's own context window: no n_ctx can pass it

    @property
    def n_ctx(self) -> int:
        """The context to load: ``with_answer`` rounded up to 1,024s, the window at most."""
        from medgem.engines.base import context_to_hold

        return context_to_hold(self.with_answer, self.window)


def context_need(model: Path, mmproj: Path | None, images: int, text_tokens: int,
                 budget: int) -> ContextNeed:
    from medgem.engines.gguf.read import read_header
    from medgem.request.variants import GEMMA3_CONTEXT

    prompt = prompt_tokens(mmproj, images, text_tokens)
    window = int(read_header(model).get("gemma3.context_length", GEMMA3_CONTEXT))
    return ContextNeed(prompt, prompt + budget, window)
