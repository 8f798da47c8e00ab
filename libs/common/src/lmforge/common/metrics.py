"""Prometheus metrics shared by every service (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMER_LABELS = ("group", "topic")

consumer_processed = Counter("lmforge_consumer_processed_total", "Messages whose handler succeeded.", CONSUMER_LABELS)
consumer_failed = Counter("lmforge_consumer_failed_total", "Handler attempts that raised.", CONSUMER_LABELS)
consumer_dead_lettered = Counter(
    "lmforge_consumer_dead_lettered_total", "Messages sent to <topic>.dlq.", CONSUMER_LABELS
)
consumer_handler_seconds = Histogram(
    "lmforge_consumer_handler_seconds",
    "Handler latency per message, retries included.",
    CONSUMER_LABELS,
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
consumer_lag = Gauge(
    "lmforge_consumer_lag", "High watermark minus next offset to process.", (*CONSUMER_LABELS, "partition")
)
producer_sent = Counter("lmforge_producer_sent_total", "Events acknowledged by the broker.", ("topic",))
producer_errors = Counter("lmforge_producer_errors_total", "Sends the broker did not acknowledge.", ("topic",))
outbox_published = Counter("lmforge_outbox_published_total", "Outbox rows published.", ("topic",))
outbox_pending = Gauge("lmforge_outbox_pending", "Outbox rows seen unpublished on the last relay pass.")
consumer_poll_errors = Counter(
    "lmforge_consumer_poll_errors_total", "Polls (getmany) that failed and were retried.", ("group",)
)
consumer_batch_fallbacks = Counter(
    "lmforge_consumer_batch_fallbacks_total",
    "Batches whose batch handler raised, so their records were handled one at a time.",
    ("group", "topic"),
)
consumer_dead_letter_rejected = Counter(
    "lmforge_consumer_dead_letter_rejected_total",
    "Dead letters the broker refused for good (a smaller fallback letter follows).",
    CONSUMER_LABELS,
)
LOOP_LABELS = ("service", "loop")
loop_failures = Counter(
    "lmforge_loop_failures_total", "Times a supervised loop failed (or returned) and was restarted.", LOOP_LABELS
)
loop_up = Gauge("lmforge_loop_up", "1 while a supervised loop is running, 0 while it waits to restart.", LOOP_LABELS)
outbox_relay_errors = Counter("lmforge_outbox_relay_errors_total", "Relay passes that failed (broker or database).")

# Every HTTP answer of every service (lmforge.common.http.create_app): the route is the template
# (/v1/models/{model}), never the raw path, so the series stay few.
HTTP_LABELS = ("service", "method", "route", "status")
http_requests = Counter(
    "lmforge_http_requests_total", "HTTP answers, by method, route template and status.", HTTP_LABELS
)
http_request_errors = Counter(
    "lmforge_http_request_errors_total",
    "HTTP server errors: 5xx answers and answers that failed after they began (a cut stream).",
    HTTP_LABELS,
)
http_request_seconds = Histogram(
    "lmforge_http_request_seconds",
    "HTTP request latency until the answer's last byte (a stream's end), by method and route template.",
    ("service", "method", "route"),
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
