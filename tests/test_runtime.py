"""The service runtime leaves a tracer provider it did not install running (tests own theirs)."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings
from lmforge.common.telemetry import tracer
from lmforge.ingest.app import build_app
from lmforge.ingest.settings import IngestSettings

from .helpers import INTERNAL_AUTH


async def test_stopping_a_service_keeps_the_callers_tracing(
    span_exporter: InMemorySpanExporter, kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    app = build_app(
        IngestSettings(
            kafka=kafka_settings,
            database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/i.db"),
            artifacts=ArtifactSettings(url=str(tmp_path / "a")),
            internal=INTERNAL_AUTH,
            upstream_topics=[f"up-{unique}"],
            consumer_group=f"g-{unique}",
        )
    )
    async with app.router.lifespan_context(app):
        pass
    with tracer().start_as_current_span(f"after-{unique}"):
        pass
    assert any(s.name == f"after-{unique}" for s in span_exporter.get_finished_spans())
