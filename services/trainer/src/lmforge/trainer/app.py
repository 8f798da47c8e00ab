from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from lmforge.common.events import Topic
from lmforge.common.http import create_app
from lmforge.common.service import ServiceRuntime

from . import api
from .executor import JobExecutor
from .handlers import TrainingRequestHandler
from .models import outbox
from .settings import TrainerSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def build_app(settings: TrainerSettings | None = None) -> FastAPI:
    settings = settings or TrainerSettings()
    runtime = ServiceRuntime(
        settings, migrations=MIGRATIONS, outbox=outbox, produces=[Topic.MODEL_READY, Topic.TRAINING_EVENTS]
    )
    assert runtime.relay is not None
    executor = JobExecutor(settings, runtime.db, runtime.artifacts, runtime.relay)
    runtime.consume(
        settings.consumer_group,
        [Topic.TRAINING_REQUESTS],
        TrainingRequestHandler(runtime.db, settings.consumer_group, executor),
    )
    runtime.background("job-executor", executor.run)
    app = create_app("trainer", lifespan=runtime.lifespan, readiness=runtime.readiness(), internal=settings.internal)
    app.state.settings, app.state.runtime, app.state.executor = settings, runtime, executor
    app.include_router(api.router)
    return app
