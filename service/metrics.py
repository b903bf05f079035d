"""Prometheus metrics, one registry per app (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_LOAD_BUCKETS = (1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The default registry's collectors (memory, CPU, open fds, GC, Python version),
        # here too: a registry of our own has none unless they are added to it.
        ProcessCollector(registry=self.registry)  # process_*: Linux only (reads /proc)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter(
            "contrastive_requests",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "contrastive_request_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "contrastive_batch_size",
            "items per model forward",
            ["modality"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        # what a request queued behind a full batch waits for it (`contrastive bench
        # overload` reads it): the model thread's wall time, a wait for another
        # modality's batch on that thread included
        self.batch_seconds = Histogram(
            "contrastive_batch_seconds",
            "time of one model forward, from the batch's start to its rows",
            ["modality"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "contrastive_queue_depth",
            "items waiting or running in the batcher",
            ["modality"],
            registry=self.registry,
        )
        # the model lifecycle: start-up loads and the admin API
        # (contrastkit.service.runtime.lifecycle)
        self.model_operations = Counter(
            "contrastive_model_operations",
            "model loads, replacements, unloads and default changes, by outcome",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.model_load_seconds = Histogram(
            "contrastive_model_load_seconds",
            "time to load and warm a model (start-up and admin loads)",
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self.models_served = Gauge(
            "contrastive_models_served",
            "models served and warm",
            registry=self.registry,
        )
