from __future__ import annotations

import socket

from pydantic import Field

from lmforge.common.settings import DatabaseSettings, HttpSettings, ServiceSettings, service_config


class TrainerSettings(ServiceSettings):
    model_config = service_config("trainer")

    service_name: str = "trainer"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=8103))
    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/trainer.db")
    )
    consumer_group: str = "lmforge-trainer"
    # Jobs run one at a time, each in its own process; the event loop never trains.
    poll_interval_s: float = 1.0
    job_timeout_s: float = 3600.0
    work_dir: str = "var/trainer-work"
    # This replica's name in job leases: a trainer that restarts under the same name takes its own
    # running jobs back at once; another replica takes them once their lease has run out.
    replica_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)
    lease_s: float = Field(default=60.0, gt=0)
    # A job whose trainer died this many times is failed rather than claimed again.
    max_attempts: int = Field(default=3, ge=1)
    # The registry: a run measures the version this alias points at (the gate's comparison) on its
    # own test records, and ``model:<name>@<alias>`` bases are resolved there. Empty: no baseline.
    registry_url: str = "http://127.0.0.1:8104"
    baseline_alias: str = "production"
    # Processes per job: more than one runs data-parallel under torchrun (one per GPU, or CPU
    # processes with gloo); the effective batch is batch_size x accumulation x processes.
    processes_per_job: int = Field(default=1, ge=1, le=64)
    # Builtin bases converted once and reused (SmolLM2 from its GGUF file: about 20 s, 540 MB).
    model_cache_dir: str = "var/model-cache"
