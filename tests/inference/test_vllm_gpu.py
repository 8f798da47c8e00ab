"""The vLLM runtime (triton_vllm_model.py) on the real vLLM and a CUDA GPU, in-process through the
fake python-backend helpers. Skipped wherever vllm or a GPU is missing, which is CI and the
developer VM: these checks were written without a GPU and have not been run yet. On a machine
with an NVIDIA GPU (docs/serving.md, "GPU path: vLLM inside Triton"):

    python3.11 -m venv .venv-gpu  # vllm brings its own torch: not the project's pinned one
    .venv-gpu/bin/pip install vllm pytest pytest-asyncio -e libs/common -e libs/devstack -e services/inference
    .venv-gpu/bin/python -m pytest tests/inference/test_vllm_gpu.py tests/inference/test_vllm_runtime.py -v

The model is a small random GPT-2 built here (head size 64, which vLLM's attention kernels
support), so the checks are about the contract, not about answer quality.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch

pytest.importorskip("vllm")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)

from transformers import GPT2Config, GPT2LMHeadModel

from lmforge.inference import triton_vllm_model

from .runtime_helpers import (
    CORPUS,
    FINAL,
    FakePbUtils,
    FakeRequest,
    build_tokenizer,
    model_args,
    outputs,
    version_folder,
    wait_final,
)

PROMPT = "Customer: where is my order? Agent:"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[triton_vllm_model.TritonPythonModel]:
    root = tmp_path_factory.mktemp("vllm-gpu")
    torch.manual_seed(11)
    tok = build_tokenizer([p + a for p, a in CORPUS] * 5, vocab_size=400)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=128,
        n_layer=2,
        n_head=2,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(root / "w")
    tok.save_pretrained(root / "w")
    patch = pytest.MonkeyPatch()
    patch.setattr(triton_vllm_model, "pb_utils", FakePbUtils)
    backend = triton_vllm_model.TritonPythonModel()
    backend.initialize(model_args(version_folder(root, root / "w"), dtype="float16", gpu_memory_utilization="0.3"))
    yield backend
    backend.finalize()
    patch.undo()


def run(model: triton_vllm_model.TritonPythonModel, *requests: FakeRequest) -> None:
    model.execute(list(requests))
    wait_final(*requests, timeout=120)


def text(request: FakeRequest) -> str:
    return "".join(o["text"] for o in outputs(request.sender))


def test_it_loads_with_the_models_context(model: triton_vllm_model.TritonPythonModel) -> None:
    assert model.prompts.context_length == 128
    assert any("lmforge runtime m-v1: vllm " in m and "context 128" in m for m in FakePbUtils.logged)


def test_streamed_and_whole_greedy_answers_agree(model: triton_vllm_model.TritonPythonModel) -> None:
    whole = FakeRequest(PROMPT, max_tokens=24)
    run(model, whole)
    streamed = FakeRequest(PROMPT, max_tokens=24, stream=True)
    run(model, streamed)
    [answer] = outputs(whole.sender)
    deltas = outputs(streamed.sender)
    assert answer["final"] and answer["finish_reason"] in ("stop", "length")
    assert answer["prompt_tokens"] == len(model.prompts.tokenizer(PROMPT)["input_ids"])
    assert 1 <= answer["completion_tokens"] <= 24
    assert text(streamed) == answer["text"]
    assert deltas[-1]["final"] and deltas[-1]["completion_tokens"] == answer["completion_tokens"]
    again = FakeRequest(PROMPT, max_tokens=24)
    run(model, again)
    assert text(again) == answer["text"]  # greedy: the same text alone


def test_the_same_seed_gives_the_same_sample(model: triton_vllm_model.TritonPythonModel) -> None:
    first, second = (FakeRequest(PROMPT, max_tokens=16, temperature=1.0, seed=5) for _ in range(2))
    run(model, first)
    run(model, second)
    assert text(first) == text(second)


def test_a_stop_string_cuts_the_text(model: triton_vllm_model.TritonPythonModel) -> None:
    whole = FakeRequest(PROMPT, max_tokens=32)
    run(model, whole)
    full = text(whole)
    assert len(full.strip()) >= 6, f"a seeded model whose answer is too short to cut: choose another PROMPT {full!r}"
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = FakeRequest(PROMPT, max_tokens=32, stop=[stop])
    run(model, cut)
    assert text(cut) == full[: full.index(stop)]
    assert outputs(cut.sender)[-1]["finish_reason"] == "stop"


def test_context_overflow_is_refused(model: triton_vllm_model.TritonPythonModel) -> None:
    request = FakeRequest(PROMPT, max_tokens=128)
    run(model, request)
    [(response, flags)] = request.sender.sent
    assert flags == FINAL and response is not None and response.error is not None
    assert response.error.message.startswith("context_length_exceeded: this model's context is 128 tokens;")


def test_a_cancelled_stream_is_aborted(model: triton_vllm_model.TritonPythonModel) -> None:
    request = FakeRequest(PROMPT, max_tokens=100, stream=True)
    model.execute([request])
    deadline = time.monotonic() + 60
    while not request.sender.sent and time.monotonic() < deadline:
        time.sleep(0.001)
    request.sender.cancelled = True
    wait_final(request, timeout=60)
    assert request.sender.sent[-1] == (None, FINAL) or outputs(request.sender)[-1]["final"]
    after = FakeRequest(PROMPT, max_tokens=4)
    run(model, after)  # the engine still serves
    assert outputs(after.sender)[-1]["final"]


def test_concurrent_requests_are_batched_by_the_engine(model: triton_vllm_model.TritonPythonModel) -> None:
    requests = [FakeRequest(PROMPT, max_tokens=48, stream=True) for _ in range(8)]
    run(model, *requests)
    finals = [outputs(r.sender)[-1] for r in requests]
    assert all(f["final"] for f in finals)
    assert max(f["batch_size"] for f in finals) > 1
