"""Prometheus metrics in the text exposition format, without a client library.

Counters and histograms live behind one lock; the queue depth is read when scraped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    observations: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
        self.total += value
        self.observations += 1


class Metrics:
    """What /metrics reports.

    Args:
        gauges: name -> (help, callable) read at scrape time (queue depth, busy engine).
    """

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = {}
        self._tokens = {"prompt": 0, "completion": 0}
        self._finish: dict[str, int] = {}
        self._histograms = {
            "medgem_request_duration_seconds": Histogram(),
            "medgem_queue_wait_seconds": Histogram(),
            "medgem_time_to_first_token_seconds": Histogram(),
        }
        self._gauges = dict(gauges or {})

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._gauges[name] = (help_text, read)

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            key = (endpoint, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1

    def record_answer(
        self, *, prompt_tokens: int, completion_tokens: int, finish_reason: str,
        queue_s: float, first_token_s: float, total_s: float,
    ) -> None:
        with self._lock:
            self._tokens["prompt"] += prompt_tokens
            self._tokens["completion"] += completion_tokens
            self._finish[finish_reason] = self._finish.get(finish_reason, 0) + 1
            self._histograms["medgem_queue_wait_seconds"].observe(queue_s)
            self._histograms["medgem_time_to_first_token_seconds"].observe(first_token_s)
            self._histograms["medgem_request_duration_seconds"].observe(queue_s + total_s)

    def render(self) -> str:
        """The exposition text."""
        lines: list[str] = []
        with self._lock:
            lines += _header("medgem_requests_total", "counter", "HTTP requests by endpoint and status.")
            for (endpoint, status), value in sorted(self._requests.items()):
                lines.append(f'medgem_requests_total{{endpoint="{endpoint}",status="{status}"}} {value}')
            lines += _header("medgem_tokens_total", "counter", "Tokens processed.")
            for kind, value in self._tokens.items():
                lines.append(f'medgem_tokens_total{{kind="{kind}"}} {value}')
            lines += _header("medgem_answers_total", "counter", "Answers by finish reason.")
            for reason, value in sorted(self._finish.items()):
                lines.append(f'medgem_answers_total{{finish_reason="{reason}"}} {value}')
            for name, histogram in self._histograms.items():
                lines += _header(name, "histogram", _HISTOGRAM_HELP[name])
                for bound, count in zip(histogram.buckets, histogram.counts, strict=True):
                    lines.append(f'{name}_bucket{{le="{bound:g}"}} {count}')
                lines.append(f'{name}_bucket{{le="+Inf"}} {histogram.observations}')
                lines.append(f"{name}_sum {histogram.total:.6f}")
                lines.append(f"{name}_count {histogram.observations}")
        for name, (help_text, read) in sorted(self._gauges.items()):
            lines += _header(name, "gauge", help_text)
            lines.append(f"{name} {read():g}")
        return "\n".join(lines) + "\n"


_HISTOGRAM_HELP = {
    "medgem_request_duration_seconds": "Seconds from queueing to the last token.",
    "medgem_queue_wait_seconds": "Seconds waiting for the engine.",
    "medgem_time_to_first_token_seconds": "Seconds from engine start to the first token.",
}


def _header(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
