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

from . import api, openai_api
from .auth import KeyCache, sync_bootstrap_key
from .downstream import Downstream, PassThrough
from .quotas import Quotas
from .settings import GatewaySettings

MIGRATIONS = Path(__file__).parent / "migrations"


def build_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    runtime = ServiceRuntime(settings, migrations=MIGRATIONS, produces=[Topic.TRAINING_REQUESTS])
    downstream = Downstream(settings)
    quotas = Quotas(settings)
    for client in downstream.clients.values():
        HTTPXClientInstrumentor.instrument_client(client)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime.lifespan(app):
            bootstrap = settings.bootstrap_admin_key
            await sync_bootstrap_key(runtime.db, bootstrap.get_secret_value() if bootstrap is not None else None)
            try:
                yield
            finally:
                await downstream.aclose()

    readiness = runtime.readiness() | {"rate_limits": quotas.ready}
    app = create_app("gateway", lifespan=lifespan, readiness=readiness)
    app.state.settings, app.state.runtime, app.state.downstream = settings, runtime, downstream
    app.state.quotas, app.state.key_cache = quotas, KeyCache(settings.api_key_cache_ttl_s)

    @app.exception_handler(PassThrough)
    async def _pass_through(_: Request, exc: PassThrough) -> Response:
        return exc.response()

    app.include_router(api.router)
    app.include_router(openai_api.router)
    return app
