"""Prometheus metrics for /metrics, through the official ``prometheus_client``.

Each server gets its own registry (two apps in one process, as in tests, never share counts);
the process collector adds CPU, memory and open files. Gauges such as the queue depth are read
when scraped.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from medgem.answer import Answer

LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """What /metrics reports; gauges read at scrape time are added with :meth:`add_gauge`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._requests = Counter("medgem_requests", "HTTP requests by endpoint and status.",
                                 ("endpoint", "status"), registry=self.registry)
        self._tokens = Counter("medgem_tokens", "Tokens processed.", ("kind",),
                               registry=self.registry)
        self._answers = Counter("medgem_answers", "Answers by finish reason.", ("finish_reason",),
                                registry=self.registry)
        self._duration = Histogram("medgem_request_duration_seconds",
                                   "Seconds from queueing to the last token.",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self._queue_wait = Histogram("medgem_queue_wait_seconds", "Seconds waiting for the engine.",
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self._first_token = Histogram("medgem_time_to_first_token_seconds",
                                      "Seconds from engine start to the first token.",
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        for kind in ("prompt", "completion"):
            self._tokens.labels(kind)  # exported as 0 before the first answer

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        Gauge(name, help_text, registry=self.registry).set_function(read)

    def count_request(self, endpoint: str, status: int) -> None:
        self._requests.labels(endpoint, str(status)).inc()

    def record_answer(self, answer: Answer, queue_s: float) -> None:
        """An answer's tokens and finish reason, and how long it waited and took."""
        self._tokens.labels("prompt").inc(answer.usage.prompt_tokens)
        self._tokens.labels("completion").inc(answer.usage.completion_tokens)
        self._answers.labels(answer.finish_reason).inc()
        self._queue_wait.observe(queue_s)
        self._first_token.observe(answer.timings.first_token_s)
        self._duration.observe(queue_s + answer.timings.total_s)

    def render(self) -> bytes:
        """The exposition text (Prometheus text format, CONTENT_TYPE_LATEST)."""
        return bytes(generate_latest(self.registry))
