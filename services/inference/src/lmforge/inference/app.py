from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from lmforge.common.events import Topic
from lmforge.common.http import create_app
from lmforge.common.service import ServiceRuntime

from . import api
from .handlers import LifecycleHandler
from .model_repository import ModelRepository
from .models import outbox
from .reconciler import Reconciler
from .settings import InferenceSettings
from .triton import TritonModels

MIGRATIONS = Path(__file__).parent / "migrations"


def build_app(settings: InferenceSettings | None = None) -> FastAPI:
    settings = settings or InferenceSettings()
    runtime = ServiceRuntime(settings, migrations=MIGRATIONS, outbox=outbox, produces=[Topic.DEPLOYMENT_EVENTS])
    assert runtime.relay is not None
    triton = TritonModels(settings)
    repository = ModelRepository(settings, runtime.artifacts)
    reconciler = Reconciler(settings, runtime.db, repository, triton, runtime.relay)
    runtime.consume(
        settings.consumer_group, [Topic.MODEL_EVENTS], LifecycleHandler(runtime.db, settings.consumer_group, reconciler)
    )
    runtime.background("reconciler", reconciler.run_periodically)
    readiness = runtime.readiness() | {"triton": triton.server_ready}
    app = create_app("inference", lifespan=runtime.lifespan, readiness=readiness, internal=settings.internal)
    app.state.settings, app.state.runtime, app.state.triton = settings, runtime, triton
    app.include_router(api.router)
    return app
