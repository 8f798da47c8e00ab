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
