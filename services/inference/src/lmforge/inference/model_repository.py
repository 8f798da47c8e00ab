"""The Triton model repository: one folder per served model version, laid out for Triton.

``<repository>/<triton model>/{config.pbtxt, 1/model.py, 1/weights/}``: the weights come from the
artifact store, ``model.py`` is the runtime in ``triton_model.py``, and ``config.pbtxt`` states the
model's inputs and outputs, its batching and where its instances run.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import textwrap
from pathlib import Path

from lmforge.common.artifacts import ArtifactStore

from .settings import InferenceSettings

MODEL_PY = Path(__file__).with_name("triton_model.py")


def triton_model_name(model: str, version: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}-v{version}"


# ``auto`` is Triton's own KIND_AUTO: the server that loads the model puts its instances on its
# GPUs when it has any, else on the CPU. The inference container never looks for a GPU itself:
# it has none in docker-compose or Kubernetes, where Triton runs beside it (docs/decisions.md).
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def config_pbtxt(name: str, settings: InferenceSettings) -> str:
    return textwrap.dedent(f"""\
        name: "{name}"
        backend: "python"
        max_batch_size: {settings.max_batch_size}
        input [
          {{ name: "PROMPT", data_type: TYPE_STRING, dims: [ 1 ] }},
          {{ name: "MAX_TOKENS", data_type: TYPE_INT32, dims: [ 1 ] }},
          {{ name: "TEMPERATURE", data_type: TYPE_FP32, dims: [ 1 ] }}
        ]
        output [
          {{ name: "TEXT", data_type: TYPE_STRING, dims: [ 1 ] }},
          {{ name: "PROMPT_TOKENS", data_type: TYPE_INT32, dims: [ 1 ] }},
          {{ name: "COMPLETION_TOKENS", data_type: TYPE_INT32, dims: [ 1 ] }}
        ]
        dynamic_batching {{ max_queue_delay_microseconds: {settings.batch_delay_us} }}
        instance_group [ {{ kind: {INSTANCE_KINDS[settings.instance_kind]}, count: 1 }} ]
        """)


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
            shutil.copy2(MODEL_PY, staging / "1" / "model.py")
            (staging / "config.pbtxt").write_text(config_pbtxt(name, self.settings))
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
