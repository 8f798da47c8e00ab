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
    # The admin key managed by settings: created (hashed) at start-up, its hash replaced when the
    # secret changes, revoked when the setting is removed. How a new deployment gets its first key.
    bootstrap_admin_key: SecretStr | None = None
    ingest_url: str = "http://127.0.0.1:8101"
    preprocess_url: str = "http://127.0.0.1:8102"
    trainer_url: str = "http://127.0.0.1:8103"
    registry_url: str = "http://127.0.0.1:8104"
    inference_url: str = "http://127.0.0.1:8105"
    # How long an accepted API key is remembered (auth.KeyCache), so that a request reads no
    # database. A revoke or rotation holds at once on the replica that made it, and on the other
    # replicas within this many seconds; 0: every request reads its key (docs/security.md).
    api_key_cache_ttl_s: float = Field(default=5.0, ge=0, le=60)
    # uvicorn's access log, a line per request: off, since every request is a trace span and is
    # counted in the lmforge_http_* metrics, and a line costs about 0.1 ms of CPU per request.
    access_log: bool = False
    connect_timeout_s: float = 3.0
    request_timeout_s: float = 30.0
    completion_timeout_s: float = 120.0
    # Refused at the edge with 413, before the body is read into memory or forwarded.
    max_request_bytes: int = 10 * 1024 * 1024
    # Per API key (a key may carry its own): requests per minute on every /v1 route, and
    # completion tokens per UTC day for each model. Over either: 429 with Retry-After.
    requests_per_minute: int = Field(default=600, ge=1)
    completion_tokens_per_day: int = Field(default=1_000_000, ge=1)
    # memory:// (this process only: one gateway) or redis://[:password@]host:port/db (shared by
    # every replica; also rediss://, redis+sentinel://, redis+cluster://). Checked in quotas.py.
    rate_limit_storage_url: str = "memory://"
