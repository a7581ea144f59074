"""Prometheus metrics of the Serve app, through Ray's metrics export (``ray.util.metrics``).

Ray exports them from every node's metrics agent (``/metrics`` on the node's
``MetricsExportPort``) with the ``ray_`` prefix, e.g. ``ray_lacquer_requests_total``.
Created lazily, once per replica process.
"""

from __future__ import annotations

from functools import cache

from ray.util.metrics import Counter, Histogram

#: Latency buckets, seconds.
LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
#: Batch-size buckets, songs.
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32]


class ServeMetrics:
    """The app's metrics. Tags: ``endpoint`` (route path), ``status`` (HTTP code as text),
    ``group`` (stage-group name, e.g. ``eq+compressor``)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "lacquer_requests_total",
            description="HTTP requests answered, by endpoint and status code.",
            tag_keys=("endpoint", "status"),
        )
        self.errors = Counter(
            "lacquer_errors_total",
            description="HTTP requests answered with a 4xx/5xx, by endpoint and status code.",
            tag_keys=("endpoint", "status"),
        )
        self.feedback_failures = Counter(
            "lacquer_feedback_failures_total",
            description="Masters whose attempts could not be appended to the feedback store.",
        )
        self.latency = Histogram(
            "lacquer_request_latency_s",
            description="End-to-end request latency at the ingress, seconds.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("endpoint",),
        )
        self.stage_latency = Histogram(
            "lacquer_stage_group_latency_s",
            description="Seconds a stage group spends on one batch.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("group",),
        )
        self.batch_size = Histogram(
            "lacquer_batch_size",
            description="Songs per dynamic batch, by stage group.",
            boundaries=BATCH_BOUNDARIES,
            tag_keys=("group",),
        )

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        tags = {"endpoint": endpoint, "status": str(status)}
        self.requests.inc(1, tags)
        if status >= 400:
            self.errors.inc(1, tags)
        self.latency.observe(seconds, {"endpoint": endpoint})

    def batch(self, group: str, size: int, seconds: float) -> None:
        self.batch_size.observe(size, {"group": group})
        self.stage_latency.observe(seconds, {"group": group})


@cache
def metrics() -> ServeMetrics:
    """This process's metrics."""
    return ServeMetrics()
