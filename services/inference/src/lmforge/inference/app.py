from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from lmforge.common.events import Topic
from lmforge.common.http import create_app
from lmforge.common.service import ServiceRuntime

from . import api
from .cache import build_cache
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
    triton = TritonModels(settings)  # one pooled gRPC client for the whole service
    cache = build_cache(settings)
    repository = ModelRepository(settings, runtime.artifacts)
    reconciler = Reconciler(settings, runtime.db, repository, triton, runtime.relay)
    runtime.consume(
        settings.consumer_group, [Topic.MODEL_EVENTS], LifecycleHandler(runtime.db, settings.consumer_group, reconciler)
    )
    runtime.background("reconciler", reconciler.run_periodically)
    runtime.background("triton-statistics", reconciler.run_statistics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with runtime.lifespan(app):
                yield
        finally:  # after the loops that use them have stopped
            await triton.close()
            await cache.close()

    readiness = runtime.readiness() | {"triton": triton.server_live}
    app = create_app("inference", lifespan=lifespan, readiness=readiness, internal=settings.internal)
    app.state.settings, app.state.runtime, app.state.triton = settings, runtime, triton
    app.state.cache, app.state.reconciler, app.state.routing = cache, reconciler, reconciler.routing
    app.include_router(api.router)
    return app
