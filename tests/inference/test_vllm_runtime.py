"""The vLLM runtime (triton_vllm_model.py) without a GPU and without vllm: a stand-in engine
(fake_vllm.py) is injected as the ``vllm`` module, and TritonPythonModel is driven through
``initialize``/``execute``/``finalize`` with the fake python-backend helpers, then once inside the
real (CPU) Triton through the service's own client. What this cannot show is how the real vLLM
behaves: docs/serving.md, "GPU path: vLLM inside Triton"."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoTokenizer, GPT2LMHeadModel

from lmforge.common.artifacts import ArtifactStore
from lmforge.devstack.servers import TritonServer
from lmforge.inference import model_repository, triton_vllm_model
from lmforge.inference.model_repository import ModelRepository, config_pbtxt
from lmforge.inference.settings import InferenceSettings
from lmforge.inference.triton import (
    ContextLengthExceeded,
    GenerationRequest,
    InvalidRequest,
    TritonModels,
    _model_error,
)
from lmforge.inference.triton_model import ModelRuntime
from lmforge.inference.triton_model import RequestError as TorchRequestError
from lmforge.inference.triton_vllm_model import Prompts, RequestError, TextState, end_token_ids, merge_adapter

from . import fake_vllm
from .runtime_helpers import (
    CORPUS,
    FINAL,
    FakePbUtils,
    FakeRequest,
    FakeSender,
    build_tokenizer,
    model_args,
    outputs,
    tiny_gpt2,
    tiny_gpt2_config,
    tiny_lora,
    version_folder,
    wait_final,
)

PROMPT = "Customer: where is my order? Agent:"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_weights(folder: Path, chat: bool = False) -> Path:
    """A tiny GPT-2 version folder (64-token context, byte-level BPE), untrained: the stand-in
    engine only needs its config and tokenizer; the torch runtime loads it for the parity checks."""
    torch.manual_seed(3)
    tok = build_tokenizer([p + a for p, a in CORPUS] * 5, vocab_size=400)
    if chat:
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.chat_template = CHAT_TEMPLATE
    config = tiny_gpt2_config(tok, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_weights(tmp_path_factory.mktemp("vllm-weights") / "m")


@pytest.fixture(scope="module")
def chat_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_weights(tmp_path_factory.mktemp("vllm-chat-weights") / "m", chat=True)


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    fake_vllm.AsyncLLMEngine.instances.clear()
    return fake_vllm


class Backend:
    def __init__(self, model: triton_vllm_model.TritonPythonModel) -> None:
        self.model = model

    @property
    def engine(self) -> fake_vllm.AsyncLLMEngine:
        return self.model.engine

    def run(self, *requests: FakeRequest, timeout: float = 20.0) -> None:
        """``execute`` (which returns at once), then wait until every request got its final response."""
        self.model.execute(list(requests))
        wait_final(*requests, timeout=timeout)


def start(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch, **parameters: str
) -> triton_vllm_model.TritonPythonModel:
    monkeypatch.setattr(triton_vllm_model, "pb_utils", FakePbUtils)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    model = triton_vllm_model.TritonPythonModel()
    model.initialize(model_args(version_folder(tmp_path, weights), **parameters))
    return model


@pytest.fixture
def backend(tmp_path: Path, weights: Path, vllm: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    model = start(tmp_path, weights, monkeypatch, dtype="bfloat16", gpu_memory_utilization="0.35")
    yield Backend(model)
    model.finalize()


def error_of(request: FakeRequest) -> Any:
    [(response, flags)] = request.sender.sent
    assert flags == FINAL and response is not None and response.error is not None
    return response.error


# -- the module and its load ---------------------------------------------------------------------


def test_the_module_imports_without_vllm_or_torch() -> None:
    code = (
        "import sys; sys.modules['vllm'] = None\n"
        "import lmforge.inference.triton_vllm_model as m\n"
        "assert m.pb_utils is None and 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_load_makes_the_engine_from_the_config_parameters(backend: Backend, weights: Path) -> None:
    args = backend.engine.args
    assert Path(args.model) == Path(args.tokenizer)
    assert Path(args.model).resolve() == weights.resolve()
    assert (args.dtype, args.gpu_memory_utilization, args.max_model_len) == ("bfloat16", 0.35, None)
    assert backend.model.prompts.context_length == 64  # the engine's max_model_len: the model's own here
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"  # the GPU Triton gave the instance, as NVIDIA's backend does
    assert any("lmforge runtime m-v1: vllm 0.0-fake on GPU 0, context 64" in m for m in FakePbUtils.logged)


def test_finalize_shuts_the_engine_down_and_stops_its_threads(
    tmp_path: Path, weights: Path, vllm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = start(tmp_path, weights, monkeypatch)
    engine = model.engine
    request = FakeRequest(PROMPT)
    Backend(model).run(request)
    model.finalize()
    assert engine.shut_down and model.engine is None
    assert not model._loop_thread.is_alive() and not model._sender_thread.is_alive()


def test_a_version_that_cannot_load_leaves_no_thread_or_folder_behind(
    tmp_path: Path, weights: Path, vllm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "hub/name"}))
    with pytest.raises(triton_vllm_model.LoadError, match="no base model"):
        start(tmp_path / "a", adapter, monkeypatch)
    assert list((tmp_path / "tmp").iterdir()) == []  # the merge folder went with the failure

    def out_of_memory(args: Any) -> Any:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(fake_vllm.AsyncLLMEngine, "from_engine_args", out_of_memory)
    model = triton_vllm_model.TritonPythonModel()
    monkeypatch.setattr(triton_vllm_model, "pb_utils", FakePbUtils)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        model.initialize(model_args(version_folder(tmp_path / "b", weights)))
    assert not model._loop_thread.is_alive() and not model._sender_thread.is_alive()


# -- answers ------------------------------------------------------------------------------------


def test_streamed_deltas_add_up_to_the_whole_answer_with_reason_and_usage(backend: Backend) -> None:
    whole = FakeRequest(PROMPT, max_tokens=32)
    streamed = FakeRequest(PROMPT, max_tokens=32, stream=True)
    backend.run(whole, streamed)
    tok = backend.model.prompts.tokenizer
    reply_tokens = len(tok(backend.engine.reply, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    prompt_tokens = len(tok(PROMPT)["input_ids"])

    [answer] = outputs(whole.sender)
    assert answer["final"] and answer["text"] == backend.engine.reply
    assert (answer["finish_reason"], answer["prompt_tokens"], answer["completion_tokens"]) == (
        "stop",  # it ended on EOS: counted, never in the text
        prompt_tokens,
        reply_tokens,
    )
    deltas = outputs(streamed.sender)
    assert len(deltas) > 3
    assert "".join(d["text"] for d in deltas) == answer["text"]
    assert [d["finish_reason"] for d in deltas] == [""] * (len(deltas) - 1) + ["stop"]
    assert [d["final"] for d in deltas] == [False] * (len(deltas) - 1) + [True]
    assert all(d["text"] for d in deltas[:-1])  # a response for every new piece of text, none empty
    counts = [d["completion_tokens"] for d in deltas]
    assert counts == sorted(counts) and counts[-1] == reply_tokens
    assert streamed.sender.finals == 1 and whole.sender.finals == 1


def test_max_tokens_ends_with_length(backend: Backend) -> None:
    request = FakeRequest(PROMPT, max_tokens=3)
    backend.run(request)
    [answer] = outputs(request.sender)
    tok = backend.model.prompts.tokenizer
    ids = tok(backend.engine.reply, add_special_tokens=False)["input_ids"][:3]
    assert (answer["text"], answer["finish_reason"], answer["completion_tokens"]) == (tok.decode(ids), "length", 3)


def two_stops_in_one_token(tok: Any, reply: str) -> tuple[str, str]:
    """Two characters that first appear in the same token of ``reply``, in text order: the engine
    sees both in one step."""
    before = ""
    for token in tok(reply, add_special_tokens=False)["input_ids"]:
        piece = tok.decode([token])
        fresh = [c for c in dict.fromkeys(piece) if c.strip() and c not in before]
        if len(fresh) >= 2:
            return fresh[0], fresh[1]
        before += piece
    raise AssertionError(f"no token of {reply!r} brings two new characters")


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_cut_the_text_before_the_earliest_match(backend: Backend, stream: bool) -> None:
    reply = backend.engine.reply  # " it ships today. glad to help!"
    earlier, later = two_stops_in_one_token(backend.model.prompts.tokenizer, reply)
    one = FakeRequest(PROMPT, max_tokens=32, stop=["today", ""], stream=stream)
    # vLLM stops on the first of its list it finds in a step (``later`` here); the contract cuts
    # the text before the earliest match.
    both = FakeRequest(PROMPT, max_tokens=32, stop=[later, earlier], stream=stream)
    backend.run(one, both)
    for request, expected in ((one, reply[: reply.index("today")]), (both, reply[: reply.index(earlier)])):
        answers = outputs(request.sender)
        assert "".join(a["text"] for a in answers) == expected
        assert answers[-1]["finish_reason"] == "stop" and answers[-1]["final"]
        assert all(not a["final"] for a in answers[:-1])
    calls = sorted(backend.engine.calls.values(), key=lambda c: len(c.params.stop[0]))
    assert [c.params.stop for c in calls] == [[later, earlier], ["today"]]  # "" dropped: torch ignores it


def test_text_that_may_start_a_stop_string_or_ends_mid_character_is_held_back() -> None:
    state = TextState(["END"])
    assert not state.update("abc E") and state.pending(False) == "abc "
    assert not state.update("abc EN") and state.pending(False) == ""
    assert not state.update("abc ENx") and state.pending(False) == "ENx"
    assert state.update("abc ENx yEND tail") and state.text == "abc ENx y"
    assert state.pending(True) == " y"
    mid = TextState([])
    assert not mid.update("caf\ufffd") and mid.pending(False) == "caf"
    assert not mid.update("café") and mid.pending(False) == "é"
    assert not mid.update("café \ufffd") and mid.pending(True) == " \ufffd"  # flushed as is at the end


def test_greedy_and_sampled_requests_become_vllm_sampling_params(backend: Backend) -> None:
    greedy = FakeRequest(PROMPT, max_tokens=4, temperature=0.0, top_p=0.5, seed=42)
    sampled = FakeRequest(PROMPT, max_tokens=5, temperature=0.7, top_p=0.9, seed=42)
    unseeded = FakeRequest(PROMPT, max_tokens=6, temperature=1.3)
    backend.run(greedy, sampled, unseeded)
    params = {c.params.max_tokens: c.params for c in backend.engine.calls.values()}
    eos = backend.model.prompts.tokenizer.eos_token_id
    assert params[4].greedy and (params[4].temperature, params[4].top_p, params[4].seed) == (0.0, 1.0, None)
    assert (params[5].temperature, params[5].top_p, params[5].seed) == (pytest.approx(0.7), pytest.approx(0.9), 42)
    assert (params[6].temperature, params[6].seed) == (pytest.approx(1.3), None)
    for p in params.values():
        assert p.n == 1 and p.stop_token_ids == [eos] and p.skip_special_tokens and not p.include_stop_str_in_output


def test_prompts_reach_the_engine_as_token_ids(backend: Backend) -> None:
    request = FakeRequest(PROMPT, max_tokens=2)
    backend.run(request)
    [call] = backend.engine.calls.values()
    assert call.prompt_token_ids == backend.model.prompts.tokenizer(PROMPT)["input_ids"]


# -- refusals and failures ------------------------------------------------------------------------


def test_context_overflow_is_refused_with_the_torch_runtimes_error(backend: Backend, weights: Path) -> None:
    prompt_tokens = len(backend.model.prompts.tokenizer(PROMPT)["input_ids"])
    over = FakeRequest(PROMPT, max_tokens=64 - prompt_tokens + 1)
    fits = FakeRequest(PROMPT, max_tokens=64 - prompt_tokens)
    backend.run(over, fits)
    error = error_of(over)
    expected = (
        f"context_length_exceeded: this model's context is 64 tokens; the prompt has {prompt_tokens} tokens "
        f"and max_tokens is {64 - prompt_tokens + 1}"
    )
    assert (error.message, error.code) == (expected, "INVALID_ARG")
    with pytest.raises(TorchRequestError) as torch_refusal:  # the same words as the torch runtime's
        ModelRuntime.load(weights).prepare(PROMPT, max_tokens=64 - prompt_tokens + 1)
    assert str(torch_refusal.value) == expected
    mapped = _model_error("infer m-v1", f"in ensemble: {error.message}")  # how the service reads it
    assert isinstance(mapped, ContextLengthExceeded) and mapped.detail == expected.split(": ", 1)[1]
    assert len(backend.engine.calls) == 1  # the refused one never reached the engine
    assert outputs(fits.sender)[-1]["final"]


def test_a_lower_max_model_len_is_the_context(
    tmp_path: Path, weights: Path, vllm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = start(tmp_path, weights, monkeypatch, max_model_len="16")
    try:
        assert model.engine.args.max_model_len == 16 and model.prompts.context_length == 16
        request = FakeRequest(PROMPT, max_tokens=16)
        Backend(model).run(request)
        assert error_of(request).message.startswith("context_length_exceeded: this model's context is 16 tokens;")
    finally:
        model.finalize()


def test_bad_requests_are_answered_at_once_and_alone(backend: Backend) -> None:
    good = FakeRequest(PROMPT, max_tokens=4)
    bad_stop = FakeRequest(PROMPT, stop="[")
    two_rows = FakeRequest(PROMPT)
    two_rows.inputs["PROMPT"] = np.array([[b"a"], [b"b"]], dtype=np.object_)
    bad_chat = FakeRequest('{"role": "user"}', chat=True)
    backend.model.execute([bad_stop, good, two_rows, bad_chat])
    for request in (bad_stop, two_rows, bad_chat):  # answered inside execute, before it returned
        error = error_of(request)
        assert error.message.startswith("invalid_request: ") and error.code == "INVALID_ARG"
    wait_final(good)
    assert outputs(good.sender)[-1]["finish_reason"] == "length"
    assert isinstance(_model_error("infer m-v1", error_of(bad_chat).message), InvalidRequest)


def test_an_engine_failure_ends_only_that_request_with_an_error(backend: Backend) -> None:
    backend.engine.fail_after = 2
    failing = FakeRequest(PROMPT, max_tokens=10, stream=True)
    backend.run(failing)
    *deltas, (last, flags) = failing.sender.sent
    assert flags == FINAL and last is not None and last.error is not None
    assert (last.error.message, last.error.code) == (
        "internal: generation failed: RuntimeError: device lost",
        "INTERNAL",
    )
    assert len(deltas) <= 2
    backend.engine.fail_after = None
    after = FakeRequest(PROMPT, max_tokens=3)
    backend.run(after)
    assert outputs(after.sender)[-1]["finish_reason"] == "length"


# -- cancellation and concurrency ------------------------------------------------------------------


def test_a_request_cancelled_before_its_first_token_is_aborted_and_closed_empty(backend: Backend) -> None:
    request = FakeRequest(PROMPT, max_tokens=20, stream=True, sender=FakeSender(cancelled=True))
    backend.run(request)
    assert request.sender.sent == [(None, FINAL)]
    [call] = backend.engine.calls.values()
    assert call.aborted and call.closed and call.outputs == 1


def test_a_client_that_goes_away_mid_stream_is_aborted_within_a_few_tokens(backend: Backend) -> None:
    backend.engine.reply_eos = False  # an endless answer
    backend.engine.step_s = 0.005
    request = FakeRequest(PROMPT, max_tokens=50, stream=True)
    backend.model.execute([request])
    deadline = time.monotonic() + 10
    while not request.sender.sent and time.monotonic() < deadline:
        time.sleep(0.002)
    request.sender.cancelled = True
    wait_final(request)
    [call] = backend.engine.calls.values()
    assert call.aborted and call.closed
    assert call.outputs < 50 and request.sender.sent[-1] == (None, FINAL)
    assert len(request.sender.sent) - 1 <= 2 * triton_vllm_model.CANCEL_CHECK_EVERY
    time.sleep(0.05)
    assert request.sender.finals == 1  # nothing after the final flag (FakeSender would raise)


def test_requests_in_flight_share_the_engine_and_report_how_many_they_were(backend: Backend) -> None:
    backend.engine.step_s = 0.01
    first = [FakeRequest(PROMPT, max_tokens=8, stream=True) for _ in range(3)]
    late = FakeRequest(PROMPT, max_tokens=8)
    backend.model.execute(first)  # three in one execute
    backend.model.execute([late])  # and one more while they generate
    wait_final(*first, late)
    sizes = sorted(outputs(r.sender)[-1]["batch_size"] for r in (*first, late))
    assert sizes == [1, 2, 3, 4]
    for request in first:  # every response of a request carries the same figure
        assert len({o["batch_size"] for o in outputs(request.sender)}) == 1
    # The engine saw the same numbers, and every request came out whole.
    assert sorted(c.in_flight for c in backend.engine.calls.values()) == [1, 2, 3, 4]
    texts = {"".join(o["text"] for o in outputs(r.sender)) for r in (*first, late)}
    assert len(texts) == 1
    alone = FakeRequest(PROMPT, max_tokens=2)
    backend.run(alone)
    assert outputs(alone.sender)[-1]["batch_size"] == 1


# -- the same request rules as the torch runtime ----------------------------------------------------


REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (PROMPT, {}),
    ("", {}),
    (PROMPT, {"max_tokens": 0}),
    (PROMPT, {"temperature": -1.0}),
    (PROMPT, {"temperature": float("nan")}),
    (PROMPT, {"top_p": 0.0}),
    (PROMPT, {"top_p": 1.5}),
    (PROMPT, {"stop": '{"a": 1}'}),
    (PROMPT, {"stop": "[1]"}),
    (PROMPT, {"stop": "not json"}),
    (PROMPT, {"stop": '["", "x"]', "seed": 7, "temperature": 0.5, "top_p": 0.5}),
    (PROMPT, {"max_tokens": 64}),
    (json.dumps([{"role": "system", "content": "be brief"}, {"role": "user", "content": "refund please"}]), {}),
    (json.dumps([{"role": "user"}]), {}),
    (json.dumps([]), {}),
    ("not json", {}),
    (json.dumps([{"role": "user", "content": "x " * 80}]), {}),
]


def prepared_or_error(prepare: Any, prompt: str, chat: bool, kwargs: dict[str, Any]) -> Any:
    try:
        r = prepare(prompt, chat=chat, **kwargs)
    except (RequestError, TorchRequestError) as exc:
        return str(exc)
    return (r.prompt_ids, r.max_tokens, r.temperature, r.top_p, r.seed, r.stop)


@pytest.mark.parametrize("chat_template", [False, True])
def test_requests_are_checked_and_tokenized_exactly_as_the_torch_runtime_does(
    weights: Path, chat_weights: Path, chat_template: bool
) -> None:
    folder = chat_weights if chat_template else weights
    torch_runtime = ModelRuntime.load(folder)
    prompts = Prompts(AutoTokenizer.from_pretrained(folder), 64)
    assert (prompts.chat_template is not None) is chat_template
    for prompt, kwargs in REQUESTS:
        chat = prompt.startswith("[") or prompt == "not json"
        ours = prepared_or_error(prompts.prepare, prompt, chat, kwargs)
        theirs = prepared_or_error(torch_runtime.prepare, prompt, chat, kwargs)
        assert ours == theirs, (prompt, kwargs)
    assert end_token_ids(folder, prompts.tokenizer) == torch_runtime.end_ids
    if chat_template:
        assert prompts.tokenizer.convert_tokens_to_ids("<|im_end|>") in torch_runtime.end_ids


def test_a_chat_request_without_a_template_uses_the_default_one(backend: Backend) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "refund please"}]
    request = FakeRequest(messages, max_tokens=2)
    backend.run(request)
    [call] = backend.engine.calls.values()
    expected = "system: be brief\nuser: refund please\nassistant:"
    assert call.prompt_token_ids == backend.model.prompts.tokenizer(expected)["input_ids"]


def test_a_chat_model_stops_on_its_end_of_turn_token(
    tmp_path: Path, chat_weights: Path, vllm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = start(tmp_path, chat_weights, monkeypatch)
    try:
        tok = model.prompts.tokenizer
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        model.engine.reply = " hi there<|im_end|> more"
        model.engine.reply_eos = False
        request = FakeRequest([{"role": "user", "content": "hello"}], max_tokens=20)
        Backend(model).run(request)
        [call] = model.engine.calls.values()
        assert call.prompt_token_ids == tok.apply_chat_template(
            [{"role": "user", "content": "hello"}], add_generation_prompt=True
        )
        assert sorted(call.params.stop_token_ids) == sorted({tok.eos_token_id, im_end})
        [answer] = outputs(request.sender)
        ended_at = tok(" hi there<|im_end|>", add_special_tokens=False)["input_ids"]
        assert (answer["text"], answer["finish_reason"], answer["completion_tokens"]) == (
            " hi there",
            "stop",
            len(ended_at),  # the end-of-turn token counted, not shown
        )
    finally:
        model.finalize()


# -- adapters ----------------------------------------------------------------------------------------


def test_an_adapter_version_is_merged_into_a_full_model_for_the_engine(
    tmp_path: Path, vllm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    tiny = tiny_gpt2(tmp_path / "gpt2")
    _, local = tiny_lora(store, store.put_dir(tiny, "models/t/run-base"), "models/t/run-lora")
    adapter = local / "adapter"
    merged = merge_adapter(adapter, tmp_path / "merged")
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    # The merged folder answers as the torch runtime's merged-at-load adapter does.
    reference = ModelRuntime.load(adapter)
    runtime = ModelRuntime.load(merged)
    request = reference.prepare(CORPUS[0][0], max_tokens=8)
    reference_text = "".join(d.text for d in reference.generate([request]))
    assert "".join(d.text for d in runtime.generate([request])) == reference_text
    base_text = "".join(d.text for d in ModelRuntime.load(tiny).generate([request]))
    assert base_text != reference_text  # the adapter changes the answers

    model = start(tmp_path / "served", adapter, monkeypatch)
    folder = Path(model.engine.args.model)
    assert folder == model._merged and (folder / "model.safetensors").is_file()
    model.finalize()
    assert not folder.exists()


# -- the repository entry ------------------------------------------------------------------------------


def test_the_engine_setting_picks_the_repository_entry(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    uri = store.put_dir(folder, "models/m/run-1")
    runtime_dir = Path(model_repository.__file__).parent

    def written(name: str, **settings: Any) -> tuple[str, bytes]:
        s = InferenceSettings(model_repository=str(tmp_path / "repo"), **settings)
        target = ModelRepository(s, store).write_version(name, uri)
        return (target / "config.pbtxt").read_text(), (target / "1" / "model.py").read_bytes()

    torch_config, torch_py = written("torch-v1")
    assert torch_py == (runtime_dir / "triton_model.py").read_bytes()
    assert "dynamic_batching {" in torch_config and "instance_group [ { kind: KIND_AUTO, count: 1 } ]" in torch_config
    assert '"engine"' not in torch_config

    vllm_config, vllm_py = written(
        "vllm-v1", engine="vllm", precision="bf16", vllm_gpu_memory_utilization=0.3, vllm_max_model_len=4096
    )
    assert vllm_py == (runtime_dir / "triton_vllm_model.py").read_bytes()
    assert "dynamic_batching" not in vllm_config
    for line in (
        'name: "vllm-v1"',
        'backend: "python"',
        "max_batch_size: 8",
        "model_transaction_policy { decoupled: true }",
        "instance_group [ { kind: KIND_GPU, count: 1 } ]",
        'parameters { key: "engine" value: { string_value: "vllm" } }',
        'parameters { key: "dtype" value: { string_value: "bfloat16" } }',
        'parameters { key: "gpu_memory_utilization" value: { string_value: "0.3" } }',
        'parameters { key: "max_model_len" value: { string_value: "4096" } }',
    ):
        assert line in vllm_config.splitlines()
    # The inputs and outputs are the torch entry's, line for line.
    contract = [line for line in torch_config.splitlines() if "data_type" in line]
    assert len(contract) == 13 and contract == [line for line in vllm_config.splitlines() if "data_type" in line]

    _, auto_gpu_py = written("auto-gpu-v1", engine="auto", instance_kind="gpu")
    _, auto_auto_py = written("auto-auto-v1", engine="auto")
    _, auto_cpu_py = written("auto-cpu-v1", engine="auto", instance_kind="cpu")
    assert (auto_gpu_py, auto_auto_py, auto_cpu_py) == (vllm_py, torch_py, torch_py)


@pytest.mark.parametrize(
    ("settings", "engine"),
    [
        ({}, "torch"),
        ({"engine": "vllm"}, "vllm"),
        ({"engine": "vllm", "instance_kind": "gpu"}, "vllm"),
        ({"engine": "auto", "instance_kind": "gpu"}, "vllm"),
        ({"engine": "auto", "instance_kind": "auto"}, "torch"),
        ({"engine": "auto", "instance_kind": "cpu"}, "torch"),
        ({"engine": "torch", "instance_kind": "gpu"}, "torch"),
        ({"engine": "auto", "precision": "int8"}, "torch"),
    ],
)
def test_the_engine_rule(settings: dict[str, Any], engine: str) -> None:
    assert InferenceSettings(**settings).runtime_engine == engine


def test_engine_settings_that_cannot_work_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="GPU only"):
        InferenceSettings(engine="vllm", instance_kind="cpu")
    with pytest.raises(ValidationError, match="int8"):
        InferenceSettings(engine="auto", instance_kind="gpu", precision="int8")
    with pytest.raises(ValidationError):
        InferenceSettings(engine="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        InferenceSettings(vllm_gpu_memory_utilization=1.5)
    monkeypatch.setenv("LMFORGE_INFERENCE_ENGINE", "vllm")
    monkeypatch.setenv("LMFORGE_INFERENCE_VLLM_GPU_MEMORY_UTILIZATION", "0.25")
    text = config_pbtxt("m-v1", InferenceSettings())
    assert "KIND_GPU" in text and 'value: { string_value: "0.25" }' in text


# -- inside the real Triton (CPU), through the service's client ------------------------------------------


def write_cpu_vllm_entry(settings: InferenceSettings, tmp_path: Path, weights: Path, name: str) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    target = ModelRepository(settings, store).write_version(name, store.put_dir(weights, "models/m/run-1"))
    config = target / "config.pbtxt"
    config.write_text(config.read_text().replace("KIND_GPU", "KIND_CPU"))
    (target / "1" / "vllm").mkdir()
    # A step of 10 ms per token, so that concurrent requests surely overlap in the engine.
    (target / "1" / "vllm" / "__init__.py").write_text(Path(fake_vllm.__file__).read_text() + "\nSTEP_S = 0.01\n")


async def test_the_vllm_entry_serves_the_contract_inside_triton(
    triton: TritonServer, tmp_path: Path, weights: Path, unique: str
) -> None:
    """The folder the repository writes for the vllm engine, loaded by the real Triton: its config
    (decoupled, no dynamic batcher, the contract's shapes) and model.py, with two changes this
    GPU-less machine needs: the instance on the CPU, and the stand-in as the ``vllm`` package in
    the version folder (Triton's python stub puts that folder on ``sys.path``)."""
    settings = InferenceSettings(
        model_repository=str(triton.model_repository), triton_grpc_url=f"127.0.0.1:{triton.grpc_port}", engine="vllm"
    )
    name = f"vllm{unique}-v1"
    await asyncio.to_thread(write_cpu_vllm_entry, settings, tmp_path, weights, name)
    models = TritonModels(settings)
    await models.load(name)
    try:
        whole, streamed, *concurrent = await asyncio.gather(
            models.complete(name, GenerationRequest(prompt=PROMPT, max_tokens=32)),
            collect(models, name, GenerationRequest(prompt=PROMPT, max_tokens=32, stream=True)),
            *(collect(models, name, GenerationRequest(prompt=PROMPT, max_tokens=6, stream=True)) for _ in range(4)),
        )
        assert whole.text == " it ships today. glad to help!" and whole.finish_reason == "stop"
        assert "".join(d.text for d in streamed) == whole.text and len(streamed) > 3
        assert streamed[-1].completion_tokens == whole.completion_tokens
        assert max(d[-1].batch_size for d in (streamed, *concurrent)) > 1  # in the engine together
        stopped = await models.complete(name, GenerationRequest(prompt=PROMPT, max_tokens=32, stop=["today"]))
        assert (stopped.text, stopped.finish_reason) == (" it ships ", "stop")
        with pytest.raises(ContextLengthExceeded, match="this model's context is 64 tokens"):
            await models.complete(name, GenerationRequest(prompt=PROMPT, max_tokens=64))
    finally:
        await models.unload(name)
        await models.close()


async def collect(models: TritonModels, name: str, request: GenerationRequest) -> list[Any]:
    return [delta async for delta in models.generate(name, request)]
