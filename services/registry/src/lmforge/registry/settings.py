from __future__ import annotations

from pydantic import Field

from lmforge.common.settings import DatabaseSettings, HttpSettings, ServiceSettings, service_config


class RegistrySettings(ServiceSettings):
    model_config = service_config("registry")

    service_name: str = "registry"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=8104))
    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/registry.db")
    )
    consumer_group: str = "lmforge-registry"
    # Promotion gate: a version moves `production` only below this validation perplexity, and
    # only if it is no worse than the version production points at.
    gate_max_val_perplexity: float = 500.0
    gate_alias: str = "production"
