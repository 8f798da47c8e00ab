"""The Triton model repository: one folder per served model version, laid out for Triton.

``<repository>/<triton model>/{config.pbtxt, 1/model.py, 1/weights/}``: the weights come from the
artifact store, ``model.py`` is the runtime of the engine the settings choose (``triton_model.py``
for torch, ``triton_vllm_model.py`` for vLLM), and ``config.pbtxt`` states the model's inputs and
outputs, its batching and where its instances run.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from lmforge.common.artifacts import ArtifactStore

from .settings import InferenceSettings

MODEL_PY = Path(__file__).with_name("triton_model.py")
VLLM_MODEL_PY = Path(__file__).with_name("triton_vllm_model.py")
RUNTIMES = {"torch": MODEL_PY, "vllm": VLLM_MODEL_PY}

# The precision setting in vLLM's words (its ``dtype`` engine argument); int8 is refused by the
# settings for the vllm engine.
VLLM_DTYPES = {"auto": "auto", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def triton_model_name(model: str, version: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}-v{version}"


# ``auto`` is Triton's own KIND_AUTO: the server that loads the model puts its instances on its
# GPUs when it has any, else on the CPU. The inference container never looks for a GPU itself:
# it has none in docker-compose or Kubernetes, where Triton runs beside it (docs/decisions.md).
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


# Inputs and outputs of the model contract (docs/serving.md, "The Triton model contract"); every
# one has dims [1] per request row. BYTES is Triton's TYPE_STRING.
INPUTS = (
    ("PROMPT", "TYPE_STRING"),
    ("CHAT", "TYPE_BOOL"),
    ("MAX_TOKENS", "TYPE_INT32"),
    ("TEMPERATURE", "TYPE_FP32"),
    ("TOP_P", "TYPE_FP32"),
    ("SEED", "TYPE_INT64"),
    ("STOP", "TYPE_STRING"),
    ("STREAM", "TYPE_BOOL"),
)
OUTPUTS = (
    ("TEXT", "TYPE_STRING"),
    ("FINISH_REASON", "TYPE_STRING"),
    ("PROMPT_TOKENS", "TYPE_INT32"),
    ("COMPLETION_TOKENS", "TYPE_INT32"),
    ("BATCH_SIZE", "TYPE_INT32"),
)


def _tensors(specs: tuple[tuple[str, str], ...]) -> str:
    return ",\n".join(f'  {{ name: "{name}", data_type: {kind}, dims: [ 1 ] }}' for name, kind in specs)


def config_pbtxt(name: str, settings: InferenceSettings) -> str:
    """The config of the engine the settings choose (``settings.runtime_engine``)."""
    if settings.runtime_engine == "vllm":
        return vllm_config_pbtxt(name, settings)
    return torch_config_pbtxt(name, settings)


def _parameter(key: str, value: object) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'


def torch_config_pbtxt(name: str, settings: InferenceSettings) -> str:
    """Decoupled (responses streamed through a response sender), dynamically batched, with the
    weights' precision and the CPU threads per instance as parameters the runtime reads at load."""
    return (
        f'name: "{name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {settings.max_batch_size}\n"
        f"input [\n{_tensors(INPUTS)}\n]\n"
        f"output [\n{_tensors(OUTPUTS)}\n]\n"
        "model_transaction_policy { decoupled: true }\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {settings.batch_delay_us} }}\n"
        f"instance_group [ {{ kind: {INSTANCE_KINDS[settings.instance_kind]}, count: 1 }} ]\n"
        f'parameters {{ key: "precision" value: {{ string_value: "{settings.precision}" }} }}\n'
        f'parameters {{ key: "cpu_threads" value: {{ string_value: "{settings.cpu_threads}" }} }}\n'
    )


def vllm_config_pbtxt(name: str, settings: InferenceSettings) -> str:
    """The same inputs and outputs, decoupled, one instance on a GPU, and no dynamic batching: as in
    NVIDIA's vLLM backend, Triton hands each request to ``execute`` as it comes and vLLM's own
    scheduler batches the requests in flight (continuous batching). ``max_batch_size`` stays as
    in the torch config so that a request keeps its ``[1, 1]`` shape; with no batcher configured,
    Triton never puts two requests into one ``execute``. The engine arguments are parameters."""
    return (
        f'name: "{name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {settings.max_batch_size}\n"
        f"input [\n{_tensors(INPUTS)}\n]\n"
        f"output [\n{_tensors(OUTPUTS)}\n]\n"
        "model_transaction_policy { decoupled: true }\n"
        "instance_group [ { kind: KIND_GPU, count: 1 } ]\n"
        + _parameter("engine", "vllm")
        + _parameter("dtype", VLLM_DTYPES[settings.precision])
        + _parameter("gpu_memory_utilization", settings.vllm_gpu_memory_utilization)
        + _parameter("max_model_len", settings.vllm_max_model_len)
    )


class ModelRepository:
    def __init__(self, settings: InferenceSettings, artifacts: ArtifactStore) -> None:
        self.settings = settings
        self.artifacts = artifacts
        self.root = Path(settings.model_repository)
        self.root.mkdir(parents=True, exist_ok=True)

    def write_version(self, name: str, artifact_uri: str) -> Path:
        """Lay out ``<repo>/<name>/{config.pbtxt, 1/model.py, 1/weights/}``; atomic per model folder."""
        target = self.root / name
        if (target / "config.pbtxt").exists():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        try:
            self.artifacts.get_dir(self.artifacts.key_of(artifact_uri), staging / "1" / "weights")
            shutil.copy2(RUNTIMES[self.settings.runtime_engine], staging / "1" / "model.py")
            (staging / "config.pbtxt").write_text(config_pbtxt(name, self.settings))
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def remove(self, name: str) -> None:
        """Delete a model's folder (after Triton unloaded it); absent folders are fine."""
        target = self.root / name
        if target.parent != self.root or name in ("", ".", ".."):
            raise ValueError(f"not a model folder name: {name!r}")
        shutil.rmtree(target, ignore_errors=True)
