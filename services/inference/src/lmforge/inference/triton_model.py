# The Triton python-backend model every lmforge model version is served with. This file is copied
# into <repository>/<triton model>/1/model.py next to the Hugging Face weights in 1/weights/.
#
# Two layers in one file, because Triton loads a single model.py:
# - ModelRuntime: plain Python (torch + transformers, no Triton). It loads a version's weights
#   (precision, merged adapters), renders and checks requests, and generates for a whole batch
#   of requests at once with a KV cache. Tests and benchmarks import it in-process.
# - TritonPythonModel: the decoupled python-backend wrapper. It reads the inputs of every request
#   Triton batched into one `execute`, answers bad ones at once with an error, runs the others as
#   one batch through ModelRuntime.generate and sends each request its deltas and final response.
# The input/output contract is in docs/serving.md ("The Triton model contract").
from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # present only inside Triton's python-backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # in-process use (tests, benchmarks): ModelRuntime needs none of it
    pb_utils = None  # type: ignore[assignment]

PRECISIONS = ("auto", "fp32", "int8", "fp16", "bf16")
# End-of-turn markers of common chat templates. A chat model (its tokenizer has a chat template)
# stops on those of them its template uses, besides its EOS token(s).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eot|>")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# How often (in decode steps) open requests are asked whether their client went away.
CANCEL_CHECK_EVERY = 8


class RequestError(Exception):
    """A request the model cannot serve; ``str()`` is ``"<code>: <message>"`` (the contract's form)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class LoadError(Exception):
    """A model version that cannot be loaded (missing adapter base, unknown precision, ...)."""


def default_chat_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The chat rendering for tokenizers without a chat template: ``<role>: <content>\\n`` per
    message, then ``assistant:`` for the answer to follow."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """(weights dtype, int8 dynamic quantization?) for a precision setting on a device.

    ``auto`` is fp32 on the CPU, bf16 on a GPU that supports it (else fp16). ``int8`` is dynamic
    quantization of ``nn.Linear`` layers, a CPU technique: asked for on a GPU it is a load error.
    """
    if precision not in PRECISIONS:
        raise LoadError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    gpu = device.type == "cuda"
    if precision == "auto":
        if not gpu:
            return torch.float32, False
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), False
    if precision == "int8":
        if gpu:
            raise LoadError("precision int8 is dynamic quantization for the CPU; on a GPU use fp16 or bf16")
        return torch.float32, True
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision], False


def find_adapter_base(weights: Path) -> Path:
    """The base model of an adapter folder: ``weights/base/`` if present, else the adapter's
    ``base_model_name_or_path`` when that is an existing local directory."""
    if (weights / "base" / "config.json").is_file():
        return weights / "base"
    config = json.loads((weights / "adapter_config.json").read_text())
    named = config.get("base_model_name_or_path") or ""
    for candidate in (Path(named), weights / named):
        if named and candidate.is_dir() and (candidate / "config.json").is_file():
            return candidate
    raise LoadError(
        f"adapter in {weights.name}/ has no base model: no base/ folder with config.json beside it, "
        f"and its base_model_name_or_path {named!r} is not a local model directory"
    )


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def quantize_int8(model: Any) -> tuple[Any, int]:
    """Dynamic int8 quantization of every ``nn.Linear`` (weights int8, activations quantized per
    call). GPT-2's attention and MLP are ``Conv1D``, not ``nn.Linear``: only its LM head is hit."""
    linears = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice (torchao)
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return quantized, linears


@dataclass
class LoadReport:
    precision: str
    dtype: str
    int8_linear_layers: int
    adapter_base: str | None
    seconds: float

    def describe(self) -> str:
        parts = [f"precision {self.precision} ({self.dtype})"]
        if self.int8_linear_layers:
            parts.append(f"int8 dynamic quantization of {self.int8_linear_layers} nn.Linear layers")
        if self.adapter_base is not None:
            parts.append(f"adapter merged into base {self.adapter_base}")
        parts.append(f"loaded in {self.seconds:.2f}s")
        return ", ".join(parts)


def load_model(weights: Path, device: torch.device, precision: str = "auto") -> tuple[Any, Any, LoadReport]:
    """(model, tokenizer, report) for a version's weights folder: a full model, or a PEFT adapter
    (``adapter_config.json``) merged into its base at load time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    dtype, int8 = resolve_precision(precision, device)
    adapter_base: Path | None = None
    if (weights / "adapter_config.json").is_file():
        from peft import PeftModel

        adapter_base = find_adapter_base(weights)
        # Merged in fp32, then cast: merging in half precision would round the LoRA update twice.
        base = AutoModelForCausalLM.from_pretrained(adapter_base, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, weights).merge_and_unload()
        model = model.to(dtype)
        tokenizer = AutoTokenizer.from_pretrained(weights if _has_tokenizer(weights) else adapter_base)
    else:
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(weights)
    linears = 0
    if int8:
        model, linears = quantize_int8(model)
    model = model.to(device).eval()
    report = LoadReport(
        precision=precision,
        dtype=str(dtype).removeprefix("torch."),
        int8_linear_layers=linears,
        adapter_base=None if adapter_base is None else str(adapter_base),
        seconds=time.perf_counter() - started,
    )
    return model, tokenizer, report


@dataclass
class GenerationRequest:
    """One request, ready to generate: the prompt already tokenized and checked."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = -1
    stop: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Delta:
    """New text for request ``index``; ``finish_reason`` is set on a request's last delta only
    (``stop``, ``length``, or ``cancelled`` when its client went away)."""

    index: int
    text: str
    completion_tokens: int
    finish_reason: str | None = None


class _Row:
    """Per-request decode state: token ids, incremental detokenization, stop strings, sampler."""

    def __init__(self, index: int, request: GenerationRequest, device: torch.device) -> None:
        self.index = index
        self.request = request
        self.stop = [s for s in request.stop if s]
        self.max_stop = max((len(s) for s in self.stop), default=0)
        self.ids: list[int] = []
        self.tokens = 0  # generated tokens, an end-of-sequence token included
        self.text = ""  # decoded so far (cut at a stop string once one matched)
        self.sent = 0  # characters of text already handed out
        self.prefix_offset = 0
        self.read_offset = 0
        self.generator: torch.Generator | None = None
        if request.temperature > 0:
            self.generator = torch.Generator(device=device)
            if request.seed >= 0:
                self.generator.manual_seed(request.seed)
            else:
                self.generator.seed()

    def _decode_new(self, tokenizer: Any, final: bool) -> str:
        """Text the new ids add, or "" while it ends in an incomplete UTF-8 sequence (U+FFFD);
        a window of earlier ids keeps spacing right for tokenizers that strip leading spaces."""
        prefix = tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix) :]
        return ""

    def _append(self, new: str) -> bool:
        """Add text; True when it completes a stop string (the text is then cut before it)."""
        if not new:
            return False
        start = max(0, len(self.text) - self.max_stop + 1)
        self.text += new
        hits = [p for p in (self.text.find(s, start) for s in self.stop) if p >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def push(self, token: int, tokenizer: Any, end_ids: frozenset[int]) -> str | None:
        """Take one sampled token; the finish reason when the request is done, else None."""
        self.tokens += 1
        if token in end_ids:
            self._append(self._decode_new(tokenizer, final=True))
            return "stop"
        self.ids.append(token)
        last = self.tokens >= self.request.max_tokens
        if self._append(self._decode_new(tokenizer, final=last)):
            return "stop"
        return "length" if last else None

    def pending(self, finished: bool) -> str:
        """Text not handed out yet, keeping back a tail that may be the start of a stop string."""
        end = len(self.text)
        if not finished:
            for k in range(min(self.max_stop - 1, end - self.sent), 0, -1):
                tail = self.text[end - k :]
                if any(s.startswith(tail) for s in self.stop):
                    end -= k
                    break
        out = self.text[self.sent : end]
        self.sent = end
        return out


def _top_p_filter(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept probabilities, their token ids): the smallest most-likely set reaching ``top_p``."""
    sorted_probs, order = probs.sort(descending=True)
    keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p  # the first token is always kept
    return sorted_probs[keep], order[keep]


class ModelRuntime:
    """A loaded model version: request preparation and batched generation with a KV cache."""

    load_report: LoadReport | None = None
    _logits_to_keep = True  # compute the LM head for the last position only, where supported

    def __init__(self, model: Any, tokenizer: Any, device: torch.device | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device or torch.device("cpu")
        config = model.config
        self.context_length = int(
            getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024
        )
        self.chat_template: str | None = getattr(tokenizer, "chat_template", None) or None
        self.end_ids = self._end_token_ids()
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (min(self.end_ids) if self.end_ids else 0))

    @classmethod
    def load(cls, weights: Path, device: torch.device | None = None, precision: str = "auto") -> ModelRuntime:
        device = device or torch.device("cpu")
        model, tokenizer, report = load_model(weights, device, precision)
        runtime = cls(model, tokenizer, device)
        runtime.load_report = report
        return runtime

    def _end_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (configured, getattr(self.model.config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(int(v) for v in value)
        if self.chat_template:
            vocab = self.tokenizer.get_vocab()
            ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in self.chat_template and t in vocab)
        return frozenset(ids)

    # -- requests --------------------------------------------------------------------------

    def render_chat(self, messages: Any) -> str:
        if not isinstance(messages, list) or not messages:
            raise RequestError("invalid_request", "PROMPT for a chat request must be a non-empty JSON list of messages")
        for m in messages:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise RequestError("invalid_request", 'every chat message must be {"role": str, "content": str}')
        if self.chat_template is None:
            return default_chat_prompt(messages)
        try:
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # a template may refuse a conversation (roles, order)
            raise RequestError("invalid_request", f"the chat template refused the messages: {exc}") from exc
        return str(rendered)

    def prepare(
        self,
        prompt: str,
        *,
        chat: bool = False,
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = -1,
        stop: str | Sequence[str] = "[]",
    ) -> GenerationRequest:
        """Check one request and tokenize its prompt; RequestError when it cannot be served."""
        if isinstance(stop, str):
            try:
                stop = json.loads(stop)
            except ValueError as exc:
                raise RequestError("invalid_request", f"STOP is not JSON: {exc}") from exc
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestError("invalid_request", "STOP must be a JSON list of strings")
        if max_tokens < 1:
            raise RequestError("invalid_request", f"max_tokens must be at least 1, got {max_tokens}")
        if not math.isfinite(temperature) or temperature < 0:
            raise RequestError("invalid_request", f"temperature must be >= 0, got {temperature}")
        if not math.isfinite(top_p) or not 0 < top_p <= 1:
            raise RequestError("invalid_request", f"top_p must be in (0, 1], got {top_p}")
        if chat:
            try:
                messages = json.loads(prompt)
            except ValueError as exc:
                raise RequestError("invalid_request", f"PROMPT for a chat request is not JSON: {exc}") from exc
            text = self.render_chat(messages)
            # A template writes its own special tokens (BOS and the like).
            ids = self.tokenizer(text, add_special_tokens=self.chat_template is None)["input_ids"]
        else:
            ids = self.tokenizer(prompt)["input_ids"]
        ids = [int(i) for i in ids]
        if not ids:
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise RequestError("invalid_request", "the prompt is empty")
            ids = [int(bos)]
        if len(ids) + max_tokens > self.context_length:
            raise RequestError(
                "context_length_exceeded",
                f"this model's context is {self.context_length} tokens; the prompt has {len(ids)} tokens "
                f"and max_tokens is {max_tokens}",
            )
        return GenerationRequest(ids, max_tokens, float(temperature), float(top_p), int(seed), list(stop))

    # -- generation --------------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if self._logits_to_keep else {}
        try:
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                **kwargs,
            )
        except TypeError as exc:  # an architecture without logits_to_keep: whole-sequence logits
            if not self._logits_to_keep or "logits_to_keep" not in str(exc):
                raise
            self._logits_to_keep = False
            return self._forward(ids, mask, positions, cache)
        return out.logits[:, -1, :]

    def _sample(self, logits: torch.Tensor, rows: Sequence[_Row]) -> list[int]:
        tokens = logits.argmax(-1)
        for j, row in enumerate(rows):
            if row.generator is None:
                continue
            probs = torch.softmax(logits[j].float() / row.request.temperature, dim=-1)
            if row.request.top_p < 1.0:
                kept, ids = _top_p_filter(probs, row.request.top_p)
                tokens[j] = ids[torch.multinomial(kept, 1, generator=row.generator)[0]]
            else:
                tokens[j] = torch.multinomial(probs, 1, generator=row.generator)[0]
        return [int(t) for t in tokens.tolist()]

    @staticmethod
    def _trim_left(cache: Any, mask: torch.Tensor) -> torch.Tensor:
        """Drop leading cache columns that are padding for every remaining row."""
        lead = int(mask.any(0).int().argmax())
        layers = getattr(cache, "layers", None)
        if lead == 0 or not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            return mask
        for layer in layers:
            layer.keys = layer.keys[:, :, lead:, :]
            layer.values = layer.values[:, :, lead:, :]
        return mask[:, lead:]

    @torch.inference_mode()
    def generate(
        self, requests: Sequence[GenerationRequest], cancelled: Callable[[int], bool] | None = None
    ) -> Iterator[Delta]:
        """Generate for all requests as one left-padded batch, one token per step for every open
        request. Yields a Delta when a request has new text, and its last one with the finish
        reason. A finished request leaves the batch and the KV cache at once."""
        from transformers import DynamicCache

        if not requests:
            return
        rows = [_Row(i, r, self.device) for i, r in enumerate(requests)]
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(requests):
            ids[b, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[b, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        next_pos = mask.sum(-1)  # the position of each row's next token
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache)
        active = rows
        step = 0
        while active:
            tokens = self._sample(logits, active)
            keep: list[int] = []
            for j, (row, token) in enumerate(zip(active, tokens, strict=True)):
                reason = row.push(token, self.tokenizer, self.end_ids)
                if reason is None and cancelled and step % CANCEL_CHECK_EVERY == 0 and cancelled(row.index):
                    reason = "cancelled"
                text = row.pending(finished=reason is not None)
                if reason is not None:
                    yield Delta(row.index, text, row.tokens, reason)
                    continue
                if text:
                    yield Delta(row.index, text, row.tokens)
                keep.append(j)
            step += 1
            if not keep:
                return
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
                mask = self._trim_left(cache, mask)
                active = [active[j] for j in keep]
                tokens = [tokens[j] for j in keep]
            step_ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
            logits = self._forward(step_ids, mask, next_pos[:, None], cache)
            next_pos = next_pos + 1


# -- the Triton python backend ----------------------------------------------------------------


def _scalar(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise RequestError("invalid_request", f"input {name} is missing")
    array = tensor.as_numpy()
    if array.size != 1:
        raise RequestError("invalid_request", f"one row per request: input {name} has {array.size} values")
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _error(message: str, code_name: str) -> Any:
    code = getattr(pb_utils.TritonError, code_name, None)
    if code is None:
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


class _Open:
    """A request of the current execute still waiting for its final response."""

    def __init__(self, sender: Any, prompt_tokens: int, stream: bool) -> None:
        self.sender = sender
        self.prompt_tokens = prompt_tokens
        self.stream = stream
        self.text: list[str] = []


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        precision = parameters.get("precision", {}).get("string_value", "auto") or "auto"
        threads = int(parameters.get("cpu_threads", {}).get("string_value", "0") or 0)
        weights = Path(args["model_repository"]) / args["model_version"] / "weights"
        gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        if threads > 0:
            torch.set_num_threads(threads)  # intra-op threads of this instance (one stub process)
        device = torch.device(f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu")
        self.runtime = ModelRuntime.load(weights, device, precision)
        self.name = args.get("model_name", "")
        report = self.runtime.load_report
        pb_utils.Logger.log_info(
            f"lmforge runtime {self.name}: on {device} ({torch.get_num_threads()} threads), "
            f"context {self.runtime.context_length}, "
            f"chat template {'yes' if self.runtime.chat_template else 'default'}, "
            f"{report.describe() if report else ''}"
        )

    def _outputs(self, text: str, reason: str, prompt_tokens: int, completion_tokens: int, batch: int) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("TEXT", np.array([[text.encode("utf-8")]], dtype=np.object_)),
                pb_utils.Tensor("FINISH_REASON", np.array([[reason.encode("utf-8")]], dtype=np.object_)),
                pb_utils.Tensor("PROMPT_TOKENS", np.array([[prompt_tokens]], dtype=np.int32)),
                pb_utils.Tensor("COMPLETION_TOKENS", np.array([[completion_tokens]], dtype=np.int32)),
                pb_utils.Tensor("BATCH_SIZE", np.array([[batch]], dtype=np.int32)),
            ]
        )

    def _prepare(self, request: Any) -> tuple[GenerationRequest, bool]:
        try:
            prepared = self.runtime.prepare(
                str(_scalar(request, "PROMPT")),
                chat=bool(_scalar(request, "CHAT")),
                max_tokens=int(_scalar(request, "MAX_TOKENS")),
                temperature=float(_scalar(request, "TEMPERATURE")),
                top_p=float(_scalar(request, "TOP_P")),
                seed=int(_scalar(request, "SEED")),
                stop=str(_scalar(request, "STOP")),
            )
        except UnicodeDecodeError as exc:
            raise RequestError("invalid_request", f"PROMPT or STOP is not UTF-8: {exc}") from exc
        return prepared, bool(_scalar(request, "STREAM"))

    def execute(self, requests: list[Any]) -> None:
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        batch: list[GenerationRequest] = []
        open_: dict[int, _Open] = {}
        for request in requests:
            sender = request.get_response_sender()
            try:
                prepared, stream = self._prepare(request)
            except RequestError as exc:
                sender.send(pb_utils.InferenceResponse(error=_error(str(exc), "INVALID_ARG")), flags=final)
                continue
            except Exception as exc:  # noqa: BLE001 - this request only; the others still run
                sender.send(
                    pb_utils.InferenceResponse(error=_error(f"invalid_request: {exc}", "INVALID_ARG")), flags=final
                )
                continue
            open_[len(batch)] = _Open(sender, len(prepared.prompt_ids), stream)
            batch.append(prepared)

        def cancelled(index: int) -> bool:
            is_cancelled = getattr(open_[index].sender, "is_cancelled", None)
            return bool(is_cancelled and is_cancelled())

        size = len(batch)
        try:
            for delta in self.runtime.generate(batch, cancelled):
                state = open_[delta.index]
                if delta.finish_reason == "cancelled":
                    del open_[delta.index]
                    state.sender.send(flags=final)
                    pb_utils.Logger.log_info(
                        f"lmforge runtime {self.name}: a request was cancelled by its client "
                        f"after {delta.completion_tokens} of {batch[delta.index].max_tokens} tokens"
                    )
                elif delta.finish_reason is not None:
                    del open_[delta.index]
                    text = delta.text if state.stream else "".join(state.text) + delta.text
                    response = self._outputs(
                        text, delta.finish_reason, state.prompt_tokens, delta.completion_tokens, size
                    )
                    state.sender.send(response, flags=final)
                elif state.stream:
                    state.sender.send(self._outputs(delta.text, "", state.prompt_tokens, delta.completion_tokens, size))
                else:
                    state.text.append(delta.text)
        except Exception as exc:  # noqa: BLE001 - every open request gets a final error, none hangs
            message = f"internal: generation failed: {type(exc).__name__}: {exc}"
            pb_utils.Logger.log_error(f"lmforge runtime {self.name}: {message}")
            for state in open_.values():
                try:
                    state.sender.send(pb_utils.InferenceResponse(error=_error(message, "INTERNAL")), flags=final)
                except Exception:  # noqa: BLE001 - a sender already closed by its client
                    pass
        return None

    def finalize(self) -> None:
        self.runtime = None  # type: ignore[assignment]
