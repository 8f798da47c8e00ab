"""Where model instances run is a setting (auto|cpu|gpu); "auto" is decided by Triton, never by
looking at the inference service's own machine. Checked against the real (CPU-only) Triton."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from lmforge.common.artifacts import ArtifactStore
from lmforge.devstack.servers import TritonServer
from lmforge.inference.model_repository import ModelRepository, config_pbtxt
from lmforge.inference.settings import InferenceSettings
from lmforge.inference.triton import GenerationRequest, TritonModels, TritonRejected

from .test_reconcile import grpc_url, save_tiny_model


@pytest.mark.parametrize(("setting", "kind"), [("auto", "KIND_AUTO"), ("cpu", "KIND_CPU"), ("gpu", "KIND_GPU")])
def test_the_setting_names_the_instance_kind(setting: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFORGE_INFERENCE_INSTANCE_KIND", setting)
    text = config_pbtxt("m-v1", InferenceSettings())
    assert f"instance_group [ {{ kind: {kind}, count: 1 }} ]" in text


def test_unknown_instance_kinds_are_refused() -> None:
    with pytest.raises(ValidationError):
        InferenceSettings(instance_kind="KIND_TPU")  # type: ignore[arg-type]


async def test_explicit_kinds_reach_triton_unchanged(triton: TritonServer, tmp_path: Path, unique: str) -> None:
    """cpu loads on the CPU; gpu is passed through as asked, and this GPU-less Triton refuses it."""
    store = ArtifactStore(str(tmp_path / "artifacts"))
    uri = save_tiny_model(store, "models/m/run-1")

    def models(kind: str) -> tuple[ModelRepository, TritonModels]:
        settings = InferenceSettings(
            triton_grpc_url=grpc_url(triton),
            model_repository=str(triton.model_repository),
            instance_kind=kind,  # type: ignore[arg-type]
        )
        return ModelRepository(settings, store), TritonModels(settings)

    cpu_repository, cpu = models("cpu")
    await asyncio.to_thread(cpu_repository.write_version, f"cpu{unique}-v1", uri)
    await cpu.load(f"cpu{unique}-v1")
    try:
        assert await cpu.instance_kind(f"cpu{unique}-v1") == "KIND_CPU"
        served = await cpu.complete(f"cpu{unique}-v1", GenerationRequest(prompt="Customer: hello Agent:", max_tokens=2))
        assert served.completion_tokens >= 1
    finally:
        await cpu.unload(f"cpu{unique}-v1")
        await cpu.close()

    gpu_repository, gpu = models("gpu")
    await asyncio.to_thread(gpu_repository.write_version, f"gpu{unique}-v1", uri)
    with pytest.raises(TritonRejected, match="GPU"):
        await gpu.load(f"gpu{unique}-v1")
    assert not await gpu.is_ready(f"gpu{unique}-v1")
    await gpu.close()
