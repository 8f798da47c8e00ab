from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from lmforge.common.events import Topic
from lmforge.common.http import create_app
from lmforge.common.service import ServiceRuntime

from . import api
from .handlers import UpstreamHandler
from .settings import IngestSettings
from .store import RawRecordStore

MIGRATIONS = Path(__file__).parent / "migrations"


def build_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    runtime = ServiceRuntime(settings, migrations=MIGRATIONS, produces=[Topic.RAW_DATA])
    store = RawRecordStore(runtime.db, runtime.producer)
    runtime.consume(settings.consumer_group, settings.upstream_topics, UpstreamHandler(store))
    app = create_app("ingest", lifespan=runtime.lifespan, readiness=runtime.readiness())
    app.state.settings, app.state.runtime, app.state.store = settings, runtime, store
    app.include_router(api.router)
    return app
