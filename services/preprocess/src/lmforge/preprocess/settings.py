from __future__ import annotations

from pydantic import Field

from lmforge.common.settings import DatabaseSettings, HttpSettings, ServiceSettings, service_config


class PreprocessSettings(ServiceSettings):
    model_config = service_config("preprocess")

    service_name: str = "preprocess"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=8102))
    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/preprocess.db")
    )
    consumer_group: str = "lmforge-preprocess"
