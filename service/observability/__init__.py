"""What operators watch a running service with, besides its Prometheus metrics
(contrastkit.service.metrics): a request id on every request (request_id.py), log formats (logs.py)
and OpenTelemetry spans (tracing.py, batch_spans.py; the `otel` extra)."""
