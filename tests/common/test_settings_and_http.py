"""Settings from the environment, and the shared FastAPI app: health, readiness, metrics, errors."""

from __future__ import annotations

import httpx
import pytest
from fastapi import HTTPException
from pydantic import BaseModel

from lmforge.common.http import create_app
from lmforge.common.kafka import BrokerUnavailable
from lmforge.common.settings import ServiceSettings, service_config


class ExampleSettings(ServiceSettings):
    model_config = service_config("example")
    service_name: str = "example"
    widget_limit: int = 3


def test_settings_defaults_and_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = ExampleSettings()
    assert defaults.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert defaults.kafka.enable_idempotence is False
    monkeypatch.setenv("LMFORGE_EXAMPLE_WIDGET_LIMIT", "7")
    monkeypatch.setenv("LMFORGE_EXAMPLE_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("LMFORGE_EXAMPLE_KAFKA__ENABLE_IDEMPOTENCE", "true")
    monkeypatch.setenv("LMFORGE_EXAMPLE_DATABASE__URL", "postgresql+asyncpg://db/example")
    monkeypatch.setenv("LMFORGE_OTHER_WIDGET_LIMIT", "99")  # another service's variable
    s = ExampleSettings()
    assert s.widget_limit == 7
    assert s.kafka.bootstrap_servers == "kafka:9092" and s.kafka.enable_idempotence is True
    assert s.database.url == "postgresql+asyncpg://db/example"


class Body(BaseModel):
    name: str
    count: int


async def test_app_health_metrics_and_error_shapes(span_exporter: object) -> None:
    ready = {"value": True}

    async def db_ready() -> bool:
        return ready["value"]

    app = create_app("example", readiness={"database": db_ready})

    @app.post("/things")
    async def make(body: Body) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.get("/gone")
    async def gone() -> None:
        raise HTTPException(404, {"code": "thing_not_found", "message": "no such thing", "thing": "x"})

    @app.get("/broker")
    async def broker() -> None:
        raise BrokerUnavailable("down")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/healthz")).json()["status"] == "ok"
        assert (await client.get("/readyz")).status_code == 200
        ready["value"] = False
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"] == {"database": False}
        assert "lmforge_consumer_processed_total" in (await client.get("/metrics")).text

        r = await client.post("/things", json={"name": "a"})
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "invalid_request"
        assert r.json()["error"]["message"].startswith("count:")
        assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == "count"

        r = await client.get("/boom")
        assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
        assert r.json()["error"]["code"] == "internal_error" and r.json()["error"]["type"] == "server_error"

        r = await client.get("/gone")
        assert r.status_code == 404
        error = r.json()["error"]
        assert len(error.pop("trace_id")) == 32  # every error names the trace to look up
        # OpenAI's error shape, with lmforge's stable code and the route's own fields.
        assert error == {
            "message": "no such thing",
            "type": "invalid_request_error",
            "param": None,
            "code": "thing_not_found",
            "thing": "x",
        }

        r = await client.get("/broker")
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.json()["error"]["type"] == "api_error" and r.json()["error"]["code"] == "broker_unavailable"
