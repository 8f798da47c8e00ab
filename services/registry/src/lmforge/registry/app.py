from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from lmforge.common.events import Topic
from lmforge.common.http import create_app
from lmforge.common.service import ServiceRuntime

from . import api
from .handlers import RegistryHandler
from .models import outbox
from .settings import RegistrySettings

MIGRATIONS = Path(__file__).parent / "migrations"


def build_app(settings: RegistrySettings | None = None) -> FastAPI:
    settings = settings or RegistrySettings()
    runtime = ServiceRuntime(settings, migrations=MIGRATIONS, outbox=outbox, produces=[Topic.MODEL_EVENTS])
    assert runtime.relay is not None
    runtime.consume(
        settings.consumer_group,
        [Topic.MODEL_READY, Topic.DEPLOYMENT_EVENTS],
        RegistryHandler(runtime.db, settings, runtime.relay),
    )
    app = create_app("registry", lifespan=runtime.lifespan, readiness=runtime.readiness(), internal=settings.internal)
    app.state.settings, app.state.runtime = settings, runtime
    app.include_router(api.router)
    return app
