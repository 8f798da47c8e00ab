from __future__ import annotations

from pydantic import Field, SecretStr

from lmforge.common.settings import DatabaseSettings, HttpSettings, ServiceSettings, service_config


class GatewaySettings(ServiceSettings):
    model_config = service_config("gateway")

    service_name: str = "gateway"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=8080))
    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/gateway.db")
    )
    # An admin key created (hashed) at start-up; how a new deployment gets its first key.
    bootstrap_admin_key: SecretStr | None = None
    ingest_url: str = "http://127.0.0.1:8101"
    preprocess_url: str = "http://127.0.0.1:8102"
    trainer_url: str = "http://127.0.0.1:8103"
    registry_url: str = "http://127.0.0.1:8104"
    inference_url: str = "http://127.0.0.1:8105"
    connect_timeout_s: float = 3.0
    request_timeout_s: float = 30.0
    completion_timeout_s: float = 120.0
    # Refused at the edge with 413, before the body is read into memory or forwarded.
    max_request_bytes: int = 10 * 1024 * 1024
