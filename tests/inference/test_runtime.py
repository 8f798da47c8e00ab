"""The model runtime (triton_model.py) inside the real Triton: one padded batch per execute with a
KV cache, streaming, stop strings, seeds, context checks, chat rendering, merged adapters and
int8 precision; plus the runtime's plain-Python core in-process."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.common.artifacts import ArtifactStore
from lmforge.devstack.servers import TritonServer
from lmforge.inference import triton_model
from lmforge.inference.model_repository import ModelRepository, config_pbtxt
from lmforge.inference.settings import InferenceSettings
from lmforge.inference.triton_model import LoadError, ModelRuntime, RequestError, find_adapter_base

from .runtime_helpers import (
    CORPUS,
    FakePbUtils,
    FakeRequest,
    FakeSender,
    generate,
    greedy,
    stats,
    tiny_gpt2,
    tiny_llama,
    tiny_lora,
)

PROMPTS = [prompt for prompt, _ in CORPUS] + ["Customer: hello there Agent:", "Customer: where is my refund? Agent:"]


class Served:
    def __init__(self, triton: TritonServer, root: Path, **settings: Any) -> None:
        self.triton = triton
        self.store = ArtifactStore(str(root / "artifacts"))
        self.settings = InferenceSettings(model_repository=str(triton.model_repository), **settings)
        self.repository = ModelRepository(self.settings, self.store)
        self.http = httpclient.InferenceServerClient(triton.http_url)
        self.names: list[str] = []

    def deploy(self, name: str, uri: str) -> str:
        self.repository.write_version(name, uri)
        self.http.load_model(name)
        self.names.append(name)
        return name

    def close(self) -> None:
        for name in self.names:
            self.http.unload_model(name)
            self.repository.remove(name)
        self.http.close()


@dataclass
class Deployed:
    name: str
    uri: str
    model: Any  # the same weights in-process, for transformers' reference answers
    tok: Any

    def reference(self, prompt: str, max_tokens: int) -> tuple[str, list[int]]:
        return greedy(self.model, self.tok, prompt, max_tokens)


@pytest.fixture(scope="module")
def served(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # A long batching window, so that concurrent requests surely meet in one execute.
    s = Served(triton, tmp_path_factory.mktemp("runtime"), batch_delay_us=100_000)
    yield s
    s.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained tiny GPT-2's folder, built once for the module."""
    return tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "m")


@pytest.fixture(scope="module")
def gpt2(served: Served, tiny: Path) -> Deployed:
    uri = served.store.put_dir(tiny, "models/tiny/run-1")
    name = served.deploy("rt-gpt2-v1", uri)
    return Deployed(name, uri, AutoModelForCausalLM.from_pretrained(tiny).eval(), AutoTokenizer.from_pretrained(tiny))


@pytest.fixture
async def client(triton: TritonServer) -> Any:
    c = grpcaio.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}")
    yield c
    await c.close()


async def test_concurrent_requests_are_generated_as_one_batch(client: Any, gpt2: Deployed) -> None:
    max_tokens = [2, 9, 4, 12, 6, 3, 10, 5]
    before = await stats(client, gpt2.name)
    together = await asyncio.gather(
        *(generate(client, gpt2.name, p, max_tokens=m) for p, m in zip(PROMPTS, max_tokens, strict=True))
    )
    after = await stats(client, gpt2.name, settled_at=before.requests + 8)
    alone = [await generate(client, gpt2.name, p, max_tokens=m) for p, m in zip(PROMPTS, max_tokens, strict=True)]

    # Triton's own statistics: the 8 requests were executed in batches of more than one.
    executed = {size: n - before.batches.get(size, 0) for size, n in after.batches.items()}
    assert sum(n * size for size, n in executed.items() if size > 1) == 8, executed
    assert all(max(a.batch_sizes) > 1 for a in together)
    assert all(a.batch_sizes == [1] for a in alone)
    reasons = set()
    for a, b, p, m in zip(together, alone, PROMPTS, max_tokens, strict=True):
        assert a.error is None and b.error is None
        assert (a.text, a.finish_reason, a.completion_tokens, a.prompt_tokens) == (
            b.text,
            b.finish_reason,
            b.completion_tokens,
            b.prompt_tokens,
        )
        text, ids = gpt2.reference(p, m)
        assert (a.text, a.completion_tokens) == (text, len(ids))
        assert a.finish_reason == ("stop" if ids[-1] == gpt2.tok.eos_token_id else "length")
        assert a.prompt_tokens == len(gpt2.tok(p)["input_ids"])
        reasons.add(a.finish_reason)
    # Rows left the batch at different steps, for both reasons.
    assert reasons == {"stop", "length"} and len({a.completion_tokens for a in together}) > 3


async def test_streamed_deltas_add_up_to_the_whole_text(client: Any, gpt2: Deployed) -> None:
    for prompt, max_tokens in (("Customer: refund please Agent:", 20), ("Customer: thanks Agent:", 12)):
        whole = await generate(client, gpt2.name, prompt, max_tokens=max_tokens)
        streamed = await generate(client, gpt2.name, prompt, max_tokens=max_tokens, stream=True)
        assert len(whole.deltas) == 1 and whole.finish_reasons == [whole.finish_reason]
        assert len(streamed.deltas) > 2
        assert streamed.text == whole.text
        assert streamed.finish_reasons[:-1] == [""] * (len(streamed.deltas) - 1)
        assert (streamed.finish_reason, streamed.completion_tokens) == (whole.finish_reason, whole.completion_tokens)


async def test_stop_strings_eos_and_max_tokens(client: Any, gpt2: Deployed) -> None:
    # EOS: an answer that ends with the end-of-sequence token, as transformers' generate has it.
    prompt = "Customer: refund please Agent:"
    text, ids = gpt2.reference(prompt, 20)
    assert ids[-1] == gpt2.tok.eos_token_id and len(ids) > 3, (text, ids)
    ended = await generate(client, gpt2.name, prompt, max_tokens=20)
    assert (ended.text, ended.finish_reason, ended.completion_tokens) == (text, "stop", len(ids))
    cut = await generate(client, gpt2.name, prompt, max_tokens=len(ids) - 2)
    shorter, _ = gpt2.reference(prompt, len(ids) - 2)
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == (shorter, "length", len(ids) - 2)

    # A stop string from the middle of the answer: the text ends right before its first match,
    # streamed or not, and no delta ever showed any of it.
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    expected = text[: text.find(stop)]
    for stream in (False, True):
        stopped = await generate(client, gpt2.name, prompt, max_tokens=20, stop=["never-there", stop], stream=stream)
        assert (stopped.text, stopped.finish_reason) == (expected, "stop")
        assert stopped.completion_tokens < len(ids)
        assert all(stop not in d for d in stopped.deltas)
    # A stop string the answer never contains changes nothing.
    unchanged = await generate(client, gpt2.name, prompt, max_tokens=20, stop=["zzz"], stream=True)
    assert (unchanged.text, unchanged.finish_reason) == (text, "stop")


async def test_same_seed_gives_the_same_text(client: Any, gpt2: Deployed) -> None:
    kwargs: dict[str, Any] = {"max_tokens": 12, "temperature": 1.0, "top_p": 0.95}
    prompt = PROMPTS[6]
    first = await generate(client, gpt2.name, prompt, seed=7, **kwargs)
    second = await generate(client, gpt2.name, prompt, seed=7, **kwargs)
    # The same seed inside a batch with other sampling requests still draws the same tokens.
    in_batch = await asyncio.gather(
        generate(client, gpt2.name, prompt, seed=7, stream=True, **kwargs),
        *(generate(client, gpt2.name, p, seed=1, **kwargs) for p in PROMPTS[3:6]),
    )
    assert max(in_batch[0].batch_sizes) == 4
    assert first.text == second.text == in_batch[0].text
    assert first.completion_tokens == second.completion_tokens == in_batch[0].completion_tokens
    # The seed matters, and sampling is not greedy in disguise.
    others = [await generate(client, gpt2.name, prompt, seed=s, **kwargs) for s in (1, 2, 3, 4)]
    greedy_text, _ = gpt2.reference(prompt, 12)
    assert len({first.text, *(o.text for o in others)}) > 2
    assert any(o.text != greedy_text for o in (first, *others))
    # A top_p so small that only the most likely token is left: sampling gives the greedy text.
    narrow = [
        await generate(client, gpt2.name, prompt, seed=s, max_tokens=12, temperature=1.0, top_p=1e-6) for s in (1, 2)
    ]
    assert [n.text for n in narrow] == [greedy_text, greedy_text]


async def test_context_overflow_fails_only_that_request(client: Any, gpt2: Deployed) -> None:
    before = await stats(client, gpt2.name)
    too_long, bad_stop, good = await asyncio.gather(
        generate(client, gpt2.name, PROMPTS[3], max_tokens=60),
        generate(client, gpt2.name, PROMPTS[1], max_tokens=3, stop="not json"),
        generate(client, gpt2.name, PROMPTS[0], max_tokens=5, stream=True),
    )
    after = await stats(client, gpt2.name, settled_at=before.requests + 3)
    assert after.batches.get(3, 0) - before.batches.get(3, 0) == 1  # all three arrived in one execute
    prompt_tokens = len(gpt2.tok(PROMPTS[3])["input_ids"])
    assert too_long.error is not None and too_long.error.startswith("context_length_exceeded: "), too_long
    assert f"context is 64 tokens; the prompt has {prompt_tokens} tokens and max_tokens is 60" in too_long.error
    assert bad_stop.error is not None and bad_stop.error.startswith("invalid_request: "), bad_stop
    text, ids = gpt2.reference(PROMPTS[0], 5)
    assert good.error is None and (good.text, good.completion_tokens) == (text, len(ids))
    assert good.batch_sizes[-1] == 1  # generated alone: the other two never entered generation
    # The prompt is never truncated to make room: the same prompt fits with fewer tokens.
    fits = await generate(client, gpt2.name, PROMPTS[3], max_tokens=64 - prompt_tokens)
    assert fits.error is None and fits.prompt_tokens == prompt_tokens


async def test_chat_renders_the_default_template(client: Any, gpt2: Deployed) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "refund please"}]
    chat = await generate(client, gpt2.name, messages, max_tokens=6)
    rendered = await generate(client, gpt2.name, "system: be brief\nuser: refund please\nassistant:", max_tokens=6)
    assert chat.error is None
    assert (chat.text, chat.prompt_tokens, chat.completion_tokens) == (
        rendered.text,
        rendered.prompt_tokens,
        rendered.completion_tokens,
    )
    for bad in ("hello", json.dumps([{"role": "user"}]), json.dumps({"role": "user", "content": "hi"})):
        refused = await generate(client, gpt2.name, bad, chat=True, max_tokens=3)
        assert refused.error is not None and refused.error.startswith("invalid_request: "), refused


async def test_adapter_version_is_merged_at_load(client: Any, served: Served, gpt2: Deployed) -> None:
    from peft import PeftModel

    uri, local = tiny_lora(served.store, gpt2.uri, "models/tiny/run-lora")
    try:
        model = served.deploy("rt-lora-v1", uri)
        answer = await generate(client, model, PROMPTS[3], max_tokens=10)

        tok = AutoTokenizer.from_pretrained(local / "base")
        base = AutoModelForCausalLM.from_pretrained(local / "base").eval()
        base_text = greedy(base, tok, PROMPTS[3], 10)[0]
        unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(local / "base"), local / "adapter")
        assert answer.error is None
        assert answer.text == greedy(unmerged.eval(), tok, PROMPTS[3], 10)[0]
        assert answer.text != base_text  # the adapter changes what the base says
        log = served.triton.log_path.read_text(errors="replace")
        assert "lmforge runtime rt-lora-v1:" in log and "adapter merged into base" in log
    finally:
        shutil.rmtree(local, ignore_errors=True)


async def test_int8_precision_on_a_llama_model(
    client: Any, triton: TritonServer, tmp_path: Path, gpt2: Deployed
) -> None:
    served = Served(triton, tmp_path, precision="int8")
    uri = tiny_llama(served.store, "models/llama/run-1")
    try:
        model = served.deploy("rt-llama-int8-v1", uri)
        config = (triton.model_repository / model / "config.pbtxt").read_text()
        assert 'parameters { key: "precision" value: { string_value: "int8" } }' in config
        answer = await generate(client, model, PROMPTS[3], max_tokens=8)

        local = served.store.get_dir(served.store.key_of(uri), tmp_path / "llama")
        quantized, linears = triton_model.quantize_int8(AutoModelForCausalLM.from_pretrained(local).eval())
        tok = AutoTokenizer.from_pretrained(local)
        assert answer.error is None and answer.completion_tokens >= 1
        assert answer.text == greedy(quantized, tok, PROMPTS[3], 8)[0]
        # 2 layers x (q, k, v, o, gate, up, down) + the LM head.
        assert linears == 15
        log = triton.log_path.read_text(errors="replace")
        assert "lmforge runtime rt-llama-int8-v1: on cpu (1 threads)" in log  # cpu_threads' default
        assert "precision int8 (float32), int8 dynamic quantization of 15 nn.Linear layers" in log
    finally:
        served.close()


async def test_a_client_that_goes_away_stops_its_generation_in_triton(
    triton: TritonServer, served: Served, tmp_path: Path
) -> None:
    """The service's client (``TritonModels.generate``) leaves a stream after its first delta, as
    inference does when the HTTP caller disconnects: Triton cancels the request, the runtime sees it
    at its next check and stops generating. Its log says after how many of the tokens asked for."""
    import re

    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.inference.triton import GenerationRequest as ClientRequest
    from lmforge.inference.triton import TritonModels

    from .runtime_helpers import build_tokenizer

    # Random weights and a long context: greedy decoding that never meets the end token, a few
    # milliseconds a token, so 400 tokens take far longer than a cancellation needs to arrive.
    torch.manual_seed(3)
    tok = build_tokenizer([p + a for p, a in CORPUS] * 5, vocab_size=400)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    prompt, max_tokens = PROMPTS[0], 400
    _, ids = greedy(model, tok, prompt, max_tokens)
    assert tok.eos_token_id not in ids and len(ids) == max_tokens, "it would run the whole way"
    local = tmp_path / "llama"
    model.save_pretrained(local)
    tok.save_pretrained(local)
    name = served.deploy("rt-llama-cancel-v1", served.store.put_dir(local, "models/llama-cancel/run-1"))
    models = TritonModels(served.settings.model_copy(update={"triton_grpc_url": f"127.0.0.1:{triton.grpc_port}"}))
    try:
        deltas = models.generate(name, ClientRequest(prompt=prompt, max_tokens=max_tokens, stream=True))
        first = await anext(deltas)
        assert first.finish_reason is None and first.completion_tokens < max_tokens
        await deltas.aclose()  # the caller went away

        pattern = rf"lmforge runtime {name}: a request was cancelled by its client after (\d+) of {max_tokens} tokens"
        deadline = asyncio.get_running_loop().time() + 30
        while (found := re.search(pattern, triton.log_path.read_text(errors="replace"))) is None:
            assert asyncio.get_running_loop().time() < deadline, "Triton never saw the cancellation"
            await asyncio.sleep(0.1)
        assert int(found[1]) < max_tokens // 2, f"stopped after {found[1]} of {max_tokens} tokens"
    finally:
        await models.close()


# -- in-process: the plain-Python core and the repository, no Triton --------------------------


def test_config_declares_the_contract_and_remove_deletes_the_folder(tmp_path: Path) -> None:
    text = config_pbtxt("m-v1", InferenceSettings(precision="bf16", cpu_threads=3))
    assert "model_transaction_policy { decoupled: true }" in text
    assert "dynamic_batching { max_queue_delay_microseconds: 2000 }" in text
    for line in (
        '{ name: "PROMPT", data_type: TYPE_STRING, dims: [ 1 ] }',
        '{ name: "CHAT", data_type: TYPE_BOOL, dims: [ 1 ] }',
        '{ name: "SEED", data_type: TYPE_INT64, dims: [ 1 ] }',
        '{ name: "STOP", data_type: TYPE_STRING, dims: [ 1 ] }',
        '{ name: "FINISH_REASON", data_type: TYPE_STRING, dims: [ 1 ] }',
        '{ name: "BATCH_SIZE", data_type: TYPE_INT32, dims: [ 1 ] }',
        'parameters { key: "precision" value: { string_value: "bf16" } }',
        'parameters { key: "cpu_threads" value: { string_value: "3" } }',
    ):
        assert line in text
    repository = ModelRepository(
        InferenceSettings(model_repository=str(tmp_path / "repo")), ArtifactStore(str(tmp_path / "a"))
    )
    (tmp_path / "repo" / "m-v1" / "1").mkdir(parents=True)
    repository.remove("m-v1")
    repository.remove("m-v1")  # already gone: fine
    assert not (tmp_path / "repo" / "m-v1").exists()
    with pytest.raises(ValueError):
        repository.remove("../elsewhere")


def test_adapter_base_is_found_beside_or_by_name_else_a_clear_error(tmp_path: Path, tiny: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    _, local = tiny_lora(store, store.put_dir(tiny, "models/t/run-base"), "models/t/run-lora", with_base=False)
    try:
        adapter = local / "adapter"
        assert find_adapter_base(adapter) == local / "base"  # base_model_name_or_path, a local folder
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "hub/name"}))
        with pytest.raises(LoadError, match="no base model"):
            ModelRuntime.load(adapter)
        shutil.copytree(local / "base", adapter / "base")
        assert find_adapter_base(adapter) == adapter / "base"
        runtime = ModelRuntime.load(adapter)
        assert runtime.load_report is not None and runtime.load_report.adapter_base == str(adapter / "base")
    finally:
        shutil.rmtree(local, ignore_errors=True)


def test_requests_are_checked_before_generation(tiny: Path) -> None:
    runtime = ModelRuntime.load(tiny)
    assert runtime.context_length == 64
    for kwargs, code in (
        ({"max_tokens": 0}, "invalid_request"),
        ({"temperature": -1.0}, "invalid_request"),
        ({"top_p": 0.0}, "invalid_request"),
        ({"stop": '{"a": 1}'}, "invalid_request"),
        ({"stop": "[1]"}, "invalid_request"),
        ({"max_tokens": 64}, "context_length_exceeded"),
    ):
        with pytest.raises(RequestError) as info:
            runtime.prepare("hello there", **kwargs)
        assert str(info.value).startswith(f"{code}: ")
    with pytest.raises(RequestError, match="invalid_request"):
        runtime.prepare('[{"role": "user"}]', chat=True)
    fitting = 64 - len(runtime.tokenizer("hello there")["input_ids"])
    assert runtime.prepare("hello there", max_tokens=fitting).max_tokens == fitting
    with pytest.raises(RequestError, match="context_length_exceeded"):
        runtime.prepare("hello there", max_tokens=fitting + 1)


def test_chat_models_stop_at_their_end_of_turn_token(tiny: Path) -> None:
    folder = tiny
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tok))
    runtime = ModelRuntime(model.eval(), tok)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in runtime.end_ids and tok.eos_token_id in runtime.end_ids
    request = runtime.prepare(json.dumps([{"role": "user", "content": "hello"}]), chat=True, max_tokens=5)
    assert request.prompt_ids == tok.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True
    )
    ids = torch.tensor([request.prompt_ids])
    two = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
    expected = tok.decode(two[0, ids.shape[1] :], skip_special_tokens=True)

    # The same model, made to end its turn at its third token: two tokens of text, then <|im_end|>.
    calls = []

    def end_turn_third(module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            output.logits[..., im_end] = 1e4
        return output

    model.register_forward_hook(end_turn_third, with_kwargs=True)
    deltas = list(runtime.generate([request]))
    assert len(calls) == 3
    assert ("".join(d.text for d in deltas), deltas[-1].finish_reason, deltas[-1].completion_tokens) == (
        expected,
        "stop",
        3,
    )


@pytest.fixture
def backend(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> triton_model.TritonPythonModel:
    """TritonPythonModel on the tiny GPT-2, driven in-process through a stand-in pb_utils."""
    monkeypatch.setattr(triton_model, "pb_utils", FakePbUtils)
    model = triton_model.TritonPythonModel()
    model.runtime = ModelRuntime.load(tiny)
    model.name = "tiny"
    return model


def test_execute_answers_each_request_once_and_bad_ones_alone(backend: triton_model.TritonPythonModel) -> None:
    good = FakeRequest(PROMPTS[3], max_tokens=6)
    streamed = FakeRequest(PROMPTS[3], max_tokens=6, stream=True)
    bad = FakeRequest(PROMPTS[1], stop="[")
    two_rows = FakeRequest(PROMPTS[1])
    two_rows.inputs["PROMPT"] = np.array([[b"a"], [b"b"]], dtype=np.object_)
    backend.execute([good, bad, streamed, two_rows])
    assert [r.sender.finals for r in (good, bad, streamed, two_rows)] == [1, 1, 1, 1]
    for request in (bad, two_rows):
        [(response, _)] = request.sender.sent
        assert response is not None and response.error is not None
        assert response.error.message.startswith("invalid_request: ") and response.error.code == "INVALID_ARG"
    [(whole, _)] = good.sender.sent
    assert whole is not None and whole.error is None
    assert {name: (a.shape, a.dtype.kind) for name, a in whole.outputs.items()} == {
        "TEXT": ((1, 1), "O"),
        "FINISH_REASON": ((1, 1), "O"),
        "PROMPT_TOKENS": ((1, 1), "i"),
        "COMPLETION_TOKENS": ((1, 1), "i"),
        "BATCH_SIZE": ((1, 1), "i"),
    }
    assert int(whole.outputs["BATCH_SIZE"][0, 0]) == 2  # the two good ones generated together
    assert len(streamed.sender.sent) > 1 and streamed.sender.text() == good.sender.text()


def test_a_failure_mid_generation_ends_every_open_request_with_an_error(
    backend: triton_model.TritonPythonModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = backend.runtime.model.forward
    calls = []

    def failing_second_step(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return forward(*args, **kwargs)

    monkeypatch.setattr(backend.runtime.model, "forward", failing_second_step)
    done_early = FakeRequest(PROMPTS[0], max_tokens=1)
    open_whole = FakeRequest(PROMPTS[1], max_tokens=10)
    open_stream = FakeRequest(PROMPTS[2], max_tokens=10, stream=True)
    cancelled = FakeRequest(PROMPTS[3], max_tokens=10, sender=FakeSender(cancelled=True))
    backend.execute([done_early, open_whole, open_stream, cancelled])
    assert len(calls) == 3
    assert [r.sender.finals for r in (done_early, open_whole, open_stream, cancelled)] == [1, 1, 1, 1]
    [(first, _)] = done_early.sender.sent
    assert first is not None and first.error is None and first.outputs["FINISH_REASON"][0, 0] == b"length"
    for request in (open_whole, open_stream):
        last, _ = request.sender.sent[-1]
        assert last is not None and last.error is not None
        assert last.error.message == "internal: generation failed: RuntimeError: device lost"
    assert len(open_stream.sender.sent) == 3  # two deltas, then the error
    assert cancelled.sender.sent == [(None, 1)]  # left at its first check, no text sent to nobody
