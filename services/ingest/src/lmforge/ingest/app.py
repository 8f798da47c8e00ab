from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lmforge.common.events import Topic
from lmforge.common.http import create_app, error_body
from lmforge.common.service import ServiceRuntime

from . import api
from .handlers import UpstreamHandler
from .settings import IngestSettings
from .store import RawRecordStore, RecordTooLarge
from .sweeper import UnpublishedSweeper

MIGRATIONS = Path(__file__).parent / "migrations"


def build_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    runtime = ServiceRuntime(settings, migrations=MIGRATIONS, produces=[Topic.RAW_DATA])
    store = RawRecordStore(runtime.db, runtime.producer, max_record_bytes=settings.max_record_bytes)
    upstream = UpstreamHandler(store)
    runtime.consume(settings.consumer_group, settings.upstream_topics, upstream, batch_handler=upstream.handle_batch)
    sweeper = UnpublishedSweeper(settings, store)
    runtime.background("sweeper", sweeper.run, progress=sweeper.progress)
    app = create_app("ingest", lifespan=runtime.lifespan, readiness=runtime.readiness(), internal=settings.internal)

    @app.exception_handler(RecordTooLarge)
    async def _record_too_large(_: Request, exc: RecordTooLarge) -> JSONResponse:
        body = error_body("record_too_large", str(exc), index=exc.index, size=exc.size, limit=exc.limit)
        return JSONResponse(body, status_code=413)

    app.state.settings, app.state.runtime, app.state.store = settings, runtime, store
    app.state.sweeper = sweeper
    app.include_router(api.router)
    return app
