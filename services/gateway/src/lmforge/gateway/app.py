from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from lmforge.common.events import Topic
from lmforge.common.http import create_app
from lmforge.common.service import ServiceRuntime
from lmforge.common.telemetry import get_logger

from . import api
from .auth import Scope, create_key
from .downstream import Downstream, PassThrough
from .settings import GatewaySettings

MIGRATIONS = Path(__file__).parent / "migrations"
log = get_logger(__name__)


def build_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    runtime = ServiceRuntime(settings, migrations=MIGRATIONS, produces=[Topic.TRAINING_REQUESTS])
    downstream = Downstream(settings)
    for client in downstream.clients.values():
        HTTPXClientInstrumentor.instrument_client(client)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime.lifespan(app):
            if settings.bootstrap_admin_key is not None:
                await create_key(
                    runtime.db, "bootstrap-admin", [Scope.ADMIN], settings.bootstrap_admin_key.get_secret_value()
                )
            else:
                log.warning("no bootstrap admin key configured (LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY)")
            try:
                yield
            finally:
                await downstream.aclose()

    app = create_app("gateway", lifespan=lifespan, readiness=runtime.readiness())
    app.state.settings, app.state.runtime, app.state.downstream = settings, runtime, downstream

    @app.exception_handler(PassThrough)
    async def _pass_through(_: Request, exc: PassThrough) -> Response:
        return exc.response()

    app.include_router(api.router)
    return app
