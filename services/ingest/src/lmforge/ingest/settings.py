from __future__ import annotations

from pydantic import Field

from lmforge.common.settings import DatabaseSettings, HttpSettings, ServiceSettings, service_config


class IngestSettings(ServiceSettings):
    model_config = service_config("ingest")

    service_name: str = "ingest"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=8101))
    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/ingest.db")
    )
    # Topics that upstream business systems write records to (documented JSON, any producer).
    upstream_topics: list[str] = Field(default_factory=lambda: ["upstream.records"])
    consumer_group: str = "lmforge-ingest"
    max_records_per_request: int = 1000
    max_request_bytes: int = 10 * 1024 * 1024
    # One record as JSON: its raw-data event must fit the producer's max_request_size (1 MiB).
    max_record_bytes: int = 512 * 1024
    # The sweeper republishes rows stored but not acknowledged, once older than the grace period.
    sweep_interval_s: float = 5.0
    sweep_grace_s: float = 10.0
    sweep_batch_size: int = 500
