from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.common.settings import DatabaseSettings, HttpSettings, ServiceSettings, service_config


class InferenceSettings(ServiceSettings):
    model_config = service_config("inference")

    service_name: str = "inference"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=8105))
    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/inference.db")
    )
    consumer_group: str = "lmforge-inference"
    # uvicorn's access log, a line per request: off, since every request is a trace span and is
    # counted in the lmforge_http_* metrics, and a line costs about 0.1 ms of CPU per request.
    access_log: bool = False
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
    # Which runtime generates inside Triton (docs/serving.md, "GPU path: vLLM inside Triton"):
    # "torch" (triton_model.py: CPU or GPU, Triton's dynamic batching), "vllm"
    # (triton_vllm_model.py: vLLM's continuous batching, GPU only, needs vllm in the Triton image),
    # or "auto": vllm when instance_kind is "gpu", else torch. Decided from these settings, not from
    # what Triton reports: a version's folder is written before Triton loads it and places it.
    engine: Literal["torch", "vllm", "auto"] = "torch"
    # vLLM engine arguments (config.pbtxt parameters of the vllm engine only). The fraction of the
    # GPU's memory one version may take: below one half, because a promotion loads the new version
    # before the old one is unloaded, and both must fit.
    vllm_gpu_memory_utilization: float = Field(default=0.4, gt=0, le=1)
    # The context vLLM serves and reserves KV cache for; 0: the model's own (config.json).
    vllm_max_model_len: int = Field(default=0, ge=0)
    max_batch_size: int = 8
    batch_delay_us: int = 2000
    reconcile_interval_s: float = 30.0
    # How often Triton's per-model statistics (queue time, executions) are read for /metrics.
    statistics_interval_s: float = Field(default=15.0, gt=0)
    infer_timeout_s: float = 60.0
    load_timeout_s: float = 300.0
    max_new_tokens_limit: int = 256
    # /generate resolves aliases from an in-memory copy of the deployments table, re-read after
    # every change the reconciler writes (routing.py); this bounds how long a copy is used
    # without one (a change made to the database by something else). 0: read on every request.
    routing_cache_ttl_s: float = Field(default=10.0, ge=0)
    # The response cache of deterministic (temperature 0) requests: "memory://" (this process, an
    # LRU bounded by entries and bytes), "redis://host:port/db" (shared by replicas), or "off".
    cache_url: str = Field(default="memory://", pattern=r"^(memory://|off|rediss?://.+|unix://.+)$")
    cache_ttl_s: int = Field(default=3600, ge=1)
    cache_max_entries: int = Field(default=10_000, ge=1)
    cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    @property
    def runtime_engine(self) -> Literal["torch", "vllm"]:
        """The engine a version's folder is written for: ``auto`` is vllm only where the instances
        are declared to run on a GPU (``instance_kind: gpu``)."""
        if self.engine == "auto":
            return "vllm" if self.instance_kind == "gpu" else "torch"
        return self.engine

    @model_validator(mode="after")
    def _engine_fits(self) -> InferenceSettings:
        if self.engine == "vllm" and self.instance_kind == "cpu":
            raise ValueError("engine vllm runs on a GPU only; instance_kind cpu needs engine torch")
        if self.runtime_engine == "vllm" and self.precision == "int8":
            raise ValueError(
                "precision int8 is the torch engine's CPU quantization; with vllm use auto, fp32, fp16 or bf16"
            )
        return self
