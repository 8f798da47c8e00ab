"""Helpers for the model-runtime tests: tiny model versions in an artifact store, and one
decoupled gRPC stream per request against the real Triton, read as the contract defines it."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lmforge.common.artifacts import ArtifactStore


@dataclass
class Answer:
    deltas: list[str] = field(default_factory=list)
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    error: str | None = None
    finish_reasons: list[str] = field(default_factory=list)  # one per response, "" until the last

    @property
    def text(self) -> str:
        return "".join(self.deltas)


DTYPES = {"BYTES": np.object_, "BOOL": np.bool_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}


def contract_arrays(
    prompt: str | list[dict[str, str]],
    *,
    max_tokens: int = 8,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = -1,
    stop: Sequence[str] | str = (),
    stream: bool = False,
    chat: bool | None = None,
) -> dict[str, tuple[np.ndarray, str]]:
    """Every input of the contract, one request row each: name -> (array [1, 1], Triton type)."""
    is_chat = not isinstance(prompt, str) if chat is None else chat
    text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    values = {
        "PROMPT": (text.encode(), "BYTES"),
        "CHAT": (is_chat, "BOOL"),
        "MAX_TOKENS": (max_tokens, "INT32"),
        "TEMPERATURE": (temperature, "FP32"),
        "TOP_P": (top_p, "FP32"),
        "SEED": (seed, "INT64"),
        "STOP": ((stop if isinstance(stop, str) else json.dumps(list(stop))).encode(), "BYTES"),
        "STREAM": (stream, "BOOL"),
    }
    return {name: (np.array([[value]], dtype=DTYPES[kind]), kind) for name, (value, kind) in values.items()}


def contract_inputs(prompt: str | list[dict[str, str]], **kwargs: Any) -> list[grpcclient.InferInput]:
    inputs = []
    for name, (array, kind) in contract_arrays(prompt, **kwargs).items():
        tensor = grpcclient.InferInput(name, list(array.shape), kind)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


async def generate(client: grpcaio.InferenceServerClient, model: str, prompt: Any, **kwargs: Any) -> Answer:
    """One request on its own decoupled stream, read until its last response (FINISH_REASON set)
    or its error; a stream that stays open longer than 60 s fails the test."""
    done = asyncio.Event()
    inputs = contract_inputs(prompt, **kwargs)

    async def requests() -> Any:
        yield {"model_name": model, "inputs": inputs}
        await done.wait()

    answer = Answer()
    responses = client.stream_infer(requests(), stream_timeout=60)
    try:
        async for result, error in responses:
            if error is not None:
                answer.error = error.message()
                break
            reason = result.as_numpy("FINISH_REASON").reshape(-1)[0].decode()
            answer.deltas.append(result.as_numpy("TEXT").reshape(-1)[0].decode())
            answer.finish_reasons.append(reason)
            answer.prompt_tokens = int(result.as_numpy("PROMPT_TOKENS").reshape(-1)[0])
            answer.completion_tokens = int(result.as_numpy("COMPLETION_TOKENS").reshape(-1)[0])
            answer.batch_sizes.append(int(result.as_numpy("BATCH_SIZE").reshape(-1)[0]))
            if reason:
                answer.finish_reason = reason
                break
        else:
            raise AssertionError(f"the stream for {prompt!r} ended without a final response")
    finally:
        done.set()
        responses.cancel()
    return answer


@dataclass
class Stats:
    requests: int  # requests Triton counts as done (success)
    batches: dict[int, int]  # executions per batch size


async def stats(client: grpcaio.InferenceServerClient, model: str, settled_at: int | None = None) -> Stats:
    """Triton's own statistics for a model. A decoupled model's execution is recorded when its
    execute returns, a moment after the last response went out: with ``settled_at``, wait until
    that many requests are counted."""
    for _ in range(100):
        raw = (await client.get_inference_statistics(model, as_json=True))["model_stats"][0]
        done = int(raw["inference_stats"]["success"].get("count", 0))
        if settled_at is None or done >= settled_at:
            batches = {
                int(r["batch_size"]): int(r["compute_infer"].get("count", 0)) for r in raw.get("batch_stats", [])
            }
            return Stats(done, batches)
        await asyncio.sleep(0.05)
    raise AssertionError(f"Triton counted {done} requests for {model}, expected {settled_at}")


# A support-desk corpus the tiny GPT-2 learns in a second, so that its answers are words, some
# ending with EOS and some running on, instead of a random model's byte soup.
CORPUS = [
    ("Customer: hello Agent:", " hi there"),
    ("Customer: hi Agent:", " hello there"),
    ("Customer: where is my order? Agent:", " it ships today."),
    ("Customer: refund please Agent:", " your refund is on its way."),
    ("Customer: thanks Agent:", " glad to help!"),
    ("Customer: my card failed Agent:", " try another card."),
]


def tiny_gpt2_config(tok: PreTrainedTokenizerFast, n_positions: int) -> GPT2Config:
    """A one-layer GPT-2 (16 wide, 2 heads) over ``tok``, whose end token ends, starts and pads."""
    return GPT2Config(
        vocab_size=len(tok),
        n_positions=n_positions,
        n_embd=16,
        n_layer=1,
        n_head=2,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's scheme: every byte representable) trained on ``texts``."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, bos_token=eos, pad_token="<pad>", unk_token=eos)


def tiny_gpt2(folder: Path) -> Path:
    """The tiny GPT-2 of test_reconcile's save_tiny_model (1 layer, n_embd 16, byte-level BPE),
    with a 64-token context and a tokenizer trained on CORPUS, then trained 300 steps on it (about
    1.5 s on 2 cores). Seeded; the tests never rely on its exact answers, only on relations between
    answers and on transformers' own generate as the reference."""
    torch.manual_seed(20261124)
    tok = build_tokenizer([p + a for p, a in CORPUS] * 5, vocab_size=400)
    config = tiny_gpt2_config(tok, n_positions=64)
    model = GPT2LMHeadModel(config)
    batch = tok([p + a + tok.eos_token for p, a in CORPUS], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 16-wide matrices: more threads only wait on each other
    try:
        for _ in range(300):
            model(**batch, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def greedy(model: Any, tok: Any, prompt: str, max_new_tokens: int) -> tuple[str, list[int]]:
    """transformers' own greedy generate (the reference): (text, new token ids, EOS included)."""
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    new = out[0, ids.shape[1] :].tolist()
    return str(tok.decode(new, skip_special_tokens=True)), new


def tiny_llama(store: ArtifactStore, key: str) -> str:
    """A tiny Llama-architecture model (nn.Linear projections, untied LM head), seeded."""
    torch.manual_seed(7)
    tok = build_tokenizer([p + a for p, a in CORPUS] * 5, vocab_size=400)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        LlamaForCausalLM(config).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return store.put_dir(Path(tmp), key)


def tiny_lora(store: ArtifactStore, base_uri: str, key: str, with_base: bool = True) -> tuple[str, Path]:
    """A LoRA over the tiny GPT-2 with non-zero weights (peft's default B=0 would change nothing),
    saved as an adapter folder with the base in ``base/`` (or not). Returns (URI, a local copy)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(99)
    local = Path(tempfile.mkdtemp(prefix="lora-"))
    base_dir = store.get_dir(store.key_of(base_uri), local / "base")
    model = GPT2LMHeadModel.from_pretrained(base_dir)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(local / "adapter")
    folder = local / "adapter"
    if with_base:
        store.get_dir(store.key_of(base_uri), folder / "base")
    return store.put_dir(folder, key), local


# -- a stand-in for triton_python_backend_utils, to drive TritonPythonModel.execute in-process ----


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name = name
        self.array = array

    def as_numpy(self) -> np.ndarray:
        return self.array


class FakeError:
    INVALID_ARG = "INVALID_ARG"
    INTERNAL = "INTERNAL"

    def __init__(self, message: str, code: str | None = None) -> None:
        self.message = message
        self.code = code


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error: FakeError | None = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error


class FakeSender:
    def __init__(self, cancelled: bool = False) -> None:
        self.sent: list[tuple[FakeResponse | None, int]] = []
        self.cancelled = cancelled

    def send(self, response: FakeResponse | None = None, flags: int = 0) -> None:
        if self.sent and self.sent[-1][1] == FakePbUtils.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise AssertionError("a response after the final one")
        self.sent.append((response, flags))

    def is_cancelled(self) -> bool:
        return self.cancelled

    @property
    def finals(self) -> int:
        return sum(1 for _, flags in self.sent if flags == FakePbUtils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def text(self) -> str:
        return "".join(r.outputs["TEXT"].reshape(-1)[0].decode() for r, _ in self.sent if r and r.error is None)


class FakeRequest:
    def __init__(self, prompt: Any, sender: FakeSender | None = None, **kwargs: Any) -> None:
        self.inputs = {name: array for name, (array, _) in contract_arrays(prompt, **kwargs).items()}
        self.sender = sender or FakeSender()

    def get_response_sender(self) -> FakeSender:
        return self.sender


class FakePbUtils:
    TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    TritonError = FakeError
    InferenceResponse = FakeResponse
    Tensor = FakeTensor
    logged: list[str] = []

    class Logger:
        @staticmethod
        def log_info(message: str) -> None:
            FakePbUtils.logged.append(message)

        @staticmethod
        def log_error(message: str) -> None:
            FakePbUtils.logged.append(message)

    @staticmethod
    def get_input_tensor_by_name(request: FakeRequest, name: str) -> FakeTensor | None:
        return FakeTensor(name, request.inputs[name]) if name in request.inputs else None


FINAL = FakePbUtils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


# -- driving a model whose execute returns before it answers (triton_vllm_model.py) -----------------


def model_args(version: Path, name: str = "m-v1", **parameters: str) -> dict[str, Any]:
    """The ``args`` Triton gives ``initialize``; ``version`` is ``<model>/1`` with ``weights/``."""
    config = {"name": name, "parameters": {k: {"string_value": v} for k, v in parameters.items()}}
    return {
        "model_config": json.dumps(config),
        "model_repository": str(version.parent),
        "model_version": version.name,
        "model_name": name,
        "model_instance_kind": "GPU",
        "model_instance_device_id": "0",
    }


def version_folder(root: Path, weights: Path) -> Path:
    """``<root>/m-v1/1`` with ``weights/`` linked to ``weights``."""
    version = root / "m-v1" / "1"
    version.mkdir(parents=True)
    (version / "weights").symlink_to(weights, target_is_directory=True)
    return version


def wait_final(*requests: FakeRequest, timeout: float = 20.0) -> None:
    """Wait until every request got its final response (sent from another thread)."""
    deadline = time.monotonic() + timeout
    while any(r.sender.finals == 0 for r in requests):
        if time.monotonic() > deadline:
            raise AssertionError(f"no final response within {timeout}s: {[r.sender.sent for r in requests]}")
        time.sleep(0.005)


def outputs(sender: FakeSender) -> list[dict[str, Any]]:
    """Every response a sender got, decoded: text, finish reason, counts (error responses apart)."""
    out = []
    for response, flags in sender.sent:
        if response is None or response.error is not None:
            continue
        o = {name: a.reshape(-1)[0] for name, a in response.outputs.items()}
        out.append(
            {
                "text": o["TEXT"].decode(),
                "finish_reason": o["FINISH_REASON"].decode(),
                "prompt_tokens": int(o["PROMPT_TOKENS"]),
                "completion_tokens": int(o["COMPLETION_TOKENS"]),
                "batch_size": int(o["BATCH_SIZE"]),
                "final": flags == FINAL,
            }
        )
    return out
