from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lmforge.common.settings import DatabaseSettings, HttpSettings, ServiceSettings, service_config


class GateRule(BaseModel):
    """How a model's new versions earn the gate alias (``docs/training.md``, "The gate").

    ``metric`` is a key of the version's metrics (``test_rouge_l``, ``test_accuracy``,
    ``test_bits_per_byte``, ``val_perplexity``, ...); ``direction`` says which way is better. A
    version passes when its value is on the right side of ``threshold`` (if set) and, if the alias
    points at a version already, better than that version's by at least ``min_gain`` (in the
    metric's units), both measured on the same evaluation set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(default="val_perplexity", min_length=1, max_length=100)
    direction: Literal["min", "max"] = "min"
    threshold: float | None = None
    min_gain: float = Field(default=0.0, ge=0)


class RegistrySettings(ServiceSettings):
    model_config = service_config("registry")

    service_name: str = "registry"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=8104))
    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/registry.db")
    )
    consumer_group: str = "lmforge-registry"
    gate_alias: str = "production"
    # The gate rule per model name (JSON: {"support": {"metric": "test_rouge_l", "direction": "max",
    # "threshold": 0.4, "min_gain": 0.01}}). A model without one gets ``gate_default`` or, when that
    # is unset, val_perplexity at most ``gate_max_val_perplexity``, no worse than the alias's version.
    gates: dict[str, GateRule] = Field(default_factory=dict)
    gate_default: GateRule | None = None
    gate_max_val_perplexity: float = 500.0

    def gate_rule(self, model: str) -> GateRule:
        if model in self.gates:
            return self.gates[model]
        return self.gate_default or GateRule(threshold=self.gate_max_val_perplexity)
