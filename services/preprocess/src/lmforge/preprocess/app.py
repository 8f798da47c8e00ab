from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from lmforge.common.events import Topic
from lmforge.common.http import create_app
from lmforge.common.service import ServiceRuntime

from . import api
from .handlers import RawRecordHandler
from .models import outbox
from .near_dup import NearDuplicateIndex
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
    near_dups = NearDuplicateIndex(settings.near_dup.threshold) if settings.near_dup.enabled else None
    runtime.consume(
        settings.consumer_group,
        [Topic.RAW_DATA],
        RawRecordHandler(runtime.db, settings.consumer_group, runtime.relay, masker, near_dups),
    )
    app = create_app("preprocess", lifespan=runtime.lifespan, readiness=runtime.readiness(), internal=settings.internal)
    app.state.settings, app.state.runtime = settings, runtime
    app.state.datasets = DatasetStore(runtime.db, runtime.artifacts, runtime.relay, near_dups)
    app.include_router(api.router)
    return app
