from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from lmforge.common.events import Topic
from lmforge.common.http import create_app
from lmforge.common.service import ServiceRuntime

from . import api
from .handlers import RawRecordHandler
from .models import outbox
from .pii import PiiMasker
from .settings import PreprocessSettings
from .store import DatasetStore

MIGRATIONS = Path(__file__).parent / "migrations"


def build_app(settings: PreprocessSettings | None = None) -> FastAPI:
    settings = settings or PreprocessSettings()
    runtime = ServiceRuntime(
        settings, migrations=MIGRATIONS, outbox=outbox, produces=[Topic.CLEANED_DATA, Topic.DATASET_EVENTS]
    )
    assert runtime.relay is not None
    key = settings.pii.pseudonym_key
    masker = PiiMasker(key=key.get_secret_value() if key else None)
    runtime.consume(
        settings.consumer_group,
        [Topic.RAW_DATA],
        RawRecordHandler(runtime.db, settings.consumer_group, runtime.relay, masker),
    )
    app = create_app("preprocess", lifespan=runtime.lifespan, readiness=runtime.readiness(), internal=settings.internal)
    app.state.settings, app.state.runtime = settings, runtime
    app.state.datasets = DatasetStore(runtime.db, runtime.artifacts, runtime.relay)
    app.include_router(api.router)
    return app
