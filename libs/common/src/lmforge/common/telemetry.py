"""One call sets up tracing and logging for a service process.

- Traces: an SDK ``TracerProvider`` whose resource carries ``service.name``, exporting over OTLP/HTTP
  when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set, and
  exporting nothing otherwise.
- Logs: structlog JSON lines on stdout, each carrying the current ``trace_id`` and ``span_id``.
  The standard library's loggers (uvicorn, aiokafka, sqlalchemy) go through the same renderer.
  Every line, ours or a library's, passes ``redact_log_fields`` last: fields that carry user
  text are hashed, other strings scrubbed and cut; tracebacks are rendered by
  ``format_exception_safely`` (safe messages, never local variables). See ``lmforge.common.redaction``.
- Kafka headers: ``inject_context`` / ``extract_context`` move W3C trace context in and out of a
  Kafka header list.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from structlog.typing import ExcInfo

from .redaction import format_exception_safely, redact_log_fields

TRACER_NAME = "lmforge"


# A proxy until a provider is installed, then the real tracer: safe to create at import time.
_TRACER = trace.get_tracer(TRACER_NAME)


def tracer() -> trace.Tracer:
    return _TRACER


def setup_tracing(service_name: str, extra_processors: Iterable[SpanProcessor] = ()) -> TracerProvider:
    """Install the global tracer provider once; later calls reuse it (tests set it up first)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        for p in extra_processors:
            current.add_span_processor(p)
        return current
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    for p in extra_processors:
        provider.add_span_processor(p)
    trace.set_tracer_provider(provider)
    return provider


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush()
        provider.shutdown()


def _add_trace_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"] = format(ctx.trace_id, "032x")
        event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


def _render_exception(exc_info: ExcInfo) -> str:
    """For ``ExceptionRenderer``: plain frames, safe messages, no locals (unlike rich tracebacks)."""
    return format_exception_safely(exc_info[1])


def setup_logging(service_name: str, level: str = "INFO") -> None:
    """structlog JSON to stdout, with ``service``, ``trace_id`` and ``span_id`` on every line.

    No record text: ``redact_log_fields`` runs on every line just before it is rendered.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.ExceptionRenderer(_render_exception),
            redact_log_fields,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.contextvars.bind_contextvars(service=service_name)


def setup_telemetry(service_name: str, log_level: str = "INFO") -> TracerProvider:
    setup_logging(service_name, log_level)
    return setup_tracing(service_name)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]


class _KafkaHeaderGetter(Getter[list[tuple[str, bytes]]]):
    def get(self, carrier: list[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode("utf-8", "replace") for k, v in carrier if k == key and v is not None]
        return values or None

    def keys(self, carrier: list[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


_getter = _KafkaHeaderGetter()


def inject_context(
    headers: list[tuple[str, bytes]], context: otel_context.Context | None = None
) -> list[tuple[str, bytes]]:
    """Append ``traceparent``/``tracestate`` for the current span (or ``context``'s) to a Kafka header list."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    existing = {k for k, _ in headers}
    headers.extend((k, v.encode()) for k, v in carrier.items() if k not in existing)
    return headers


def extract_context(headers: Iterable[tuple[str, bytes | None]]) -> otel_context.Context:
    carrier = [(k, v) for k, v in headers if v is not None]
    return propagate.extract(carrier, getter=_getter)  # type: ignore[arg-type]


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
