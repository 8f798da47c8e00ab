"""Settings shared by every service.

Each service derives one ``ServiceSettings`` subclass with ``service_config("<name>")``, which
reads ``LMFORGE_<NAME>_*`` variables (nested fields use ``__``, e.g.
``LMFORGE_INGEST_KAFKA__BOOTSTRAP_SERVERS``). Defaults run on one machine with no configuration.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    """Where the broker is and how producers and consumers behave."""

    bootstrap_servers: str = "127.0.0.1:9092"
    # Real Kafka supports idempotent producers; Tansu rejects InitProducerId, so it is a setting.
    enable_idempotence: bool = False
    # Also bounds how long a send waits for an unreachable broker before BrokerUnavailable (503).
    # Keep it above session_timeout_ms / 2: Tansu holds a JoinGroup that long.
    request_timeout_ms: int = 30_000
    # How long a publish waits for the broker's ack before BrokerUnavailable (HTTP: 503 + Retry-After).
    # Shorter than an HTTP client's patience: while the broker is away, callers hear so quickly.
    publish_timeout_s: float = 10.0
    linger_ms: int = 5
    # The largest request a producer sends (Kafka's default broker limit is about 1 MiB).
    max_request_size: int = 1_048_576
    # Consumer batch and group behaviour.
    max_batch_size: int = 500
    poll_timeout_ms: int = 500
    # Tansu answers the first JoinGroup after session_timeout/2: keep it short for local runs.
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    auto_offset_reset: str = "earliest"
    # Failure handling: attempts per record before it goes to <topic>.dlq.
    max_attempts: int = 3
    retry_backoff_initial_s: float = 0.2
    retry_backoff_max_s: float = 5.0
    # A dead letter's value above this size goes to the artifact store (a reference travels in
    # the headers) or, without a store, is cut to this size; either way a header says so.
    dead_letter_max_value_bytes: int = 256 * 1024
    # Create missing topics (and their DLQs) at start-up; production clusters may manage topics.
    create_topics: bool = True
    topic_partitions: int = 4
    topic_replication_factor: int = 1


class DatabaseSettings(BaseModel):
    """SQLAlchemy async URL: ``sqlite+aiosqlite:///...`` (embedded) or ``postgresql+asyncpg://...``."""

    url: str = "sqlite+aiosqlite:///var/lmforge.db"
    echo: bool = False
    pool_size: int = 5


class ArtifactSettings(BaseModel):
    """fsspec URL of the artifact store: a local folder by default, ``s3://bucket/prefix`` in production.

    ``storage_options`` go to the fsspec backend as keyword arguments, e.g. for S3 (s3fs)
    ``{"endpoint_url": "http://minio:9000", "key": ..., "secret": ..., "client_kwargs": {"region_name": ...}}``,
    set as JSON in ``LMFORGE_<SERVICE>_ARTIFACTS__STORAGE_OPTIONS``. Without ``key``/``secret``, s3fs
    uses the standard AWS credential chain (``AWS_ACCESS_KEY_ID``, a web identity, an instance role).
    """

    url: str = "var/artifacts"
    storage_options: dict[str, Any] = Field(default_factory=dict)


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000


class SupervisionSettings(BaseModel):
    """How long-running loops are restarted, and when a loop counts as stalled (``/readyz``)."""

    restart_backoff_initial_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    # No progress for this long while work waits (consumer lag, unpublished rows): not ready.
    stall_timeout_s: float = 120.0


class InternalAuthSettings(BaseModel):
    """The credential that calls between lmforge services carry (``lmforge.common.http``).

    Every service behind the gateway refuses a call without ``token`` (``401``), except
    ``/healthz``, ``/readyz`` and ``/metrics``; the gateway and inference send it on their calls.
    All services of one deployment share one token. A service without a token refuses to start,
    unless ``allow_unauthenticated`` says, on purpose, that anyone who can reach it may call it.
    """

    # At least 32 characters: `openssl rand -hex 32`. Checked when the app is built, not here,
    # so that a refused value never appears in an error message.
    token: SecretStr | None = None
    allow_unauthenticated: bool = False


class ServiceSettings(BaseSettings):
    """Base class: one instance per service process, read from the environment and ``.env``."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", env_ignore_empty=True, env_file=".env", extra="ignore")

    service_name: str = "lmforge"
    log_level: str = "INFO"
    http: HttpSettings = Field(default_factory=HttpSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    supervision: SupervisionSettings = Field(default_factory=SupervisionSettings)
    internal: InternalAuthSettings = Field(default_factory=InternalAuthSettings)


def service_config(service: str) -> SettingsConfigDict:
    """The settings config for one service: env prefix ``LMFORGE_<SERVICE>_``."""
    return SettingsConfigDict(
        env_prefix=f"LMFORGE_{service.upper()}_",
        env_nested_delimiter="__",
        env_ignore_empty=True,
        env_file=".env",
        extra="ignore",
    )
