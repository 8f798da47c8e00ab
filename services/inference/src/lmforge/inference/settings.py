from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.common.settings import DatabaseSettings, HttpSettings, ServiceSettings, service_config


class InferenceSettings(ServiceSettings):
    model_config = service_config("inference")

    service_name: str = "inference"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=8105))
    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/inference.db")
    )
    consumer_group: str = "lmforge-inference"
    # host:port of Triton's gRPC endpoint: every call (load, unload, readiness, statistics,
    # streamed inference) goes through one pooled channel to it.
    triton_grpc_url: str = "127.0.0.1:8001"
    # The folder Triton was started with (--model-repository); shared volume in docker-compose.
    model_repository: str = "var/triton-models"
    registry_url: str = "http://127.0.0.1:8104"
    # Where Triton runs each model instance: "cpu", "gpu", or "auto" (Triton's KIND_AUTO: its own
    # GPUs if it has any, else the CPU). Never decided by looking at this service's machine.
    instance_kind: Literal["auto", "cpu", "gpu"] = "auto"
    # Weights precision in the runtime (config.pbtxt parameter): "auto" is fp32 on the CPU and bf16
    # on a GPU that supports it; "int8" is dynamic quantization of nn.Linear layers (CPU only).
    precision: Literal["auto", "fp32", "int8", "fp16", "bf16"] = "auto"
    # torch intra-op threads per model instance on the CPU (config.pbtxt parameter; 0: torch's
    # default, one per core). 1 by default: instances of several models share the CPU, and their
    # OpenMP threads spinning against each other cut batched throughput 30x on 2 cores
    # (docs/serving.md). Raise it for one large model on a machine of its own.
    cpu_threads: int = Field(default=1, ge=0, le=256)
    max_batch_size: int = 8
    batch_delay_us: int = 2000
    reconcile_interval_s: float = 30.0
    # How often Triton's per-model statistics (queue time, executions) are read for /metrics.
    statistics_interval_s: float = Field(default=15.0, gt=0)
    infer_timeout_s: float = 60.0
    load_timeout_s: float = 300.0
    max_new_tokens_limit: int = 256
    # The response cache of deterministic (temperature 0) requests: "memory://" (this process, an
    # LRU bounded by entries and bytes), "redis://host:port/db" (shared by replicas), or "off".
    cache_url: str = Field(default="memory://", pattern=r"^(memory://|off|rediss?://.+|unix://.+)$")
    cache_ttl_s: int = Field(default=3600, ge=1)
    cache_max_entries: int = Field(default=10_000, ge=1)
    cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
