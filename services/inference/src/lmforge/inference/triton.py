"""The Triton client side: one pooled gRPC client for loads, readiness, statistics and generation.

Every call goes through a single ``tritonclient.grpc.aio.InferenceServerClient`` (one HTTP/2
channel), made on first use inside the service's event loop and closed at shutdown. Generation
always uses the bidirectional streaming RPC: every model is decoupled (docs/serving.md), and a
decoupled model can only be reached that way, streamed answer or not. Each generation is one
gRPC stream carrying one request; its metadata carries the W3C trace context, so Triton's own
spans continue the caller's trace. The request is built as the ``ModelInferRequest`` protobuf
(raw little-endian tensors) and written to the client's own stub; the responses' raw outputs are
read directly: about 0.3 ms less CPU per generation than tritonclient's ``stream_infer``, which
builds each input from a numpy array and runs a task per stream to read an iterator of requests.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import tritonclient.grpc.aio as triton_grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import InferenceServerException

from lmforge.common.telemetry import tracer

from . import metrics
from .settings import InferenceSettings


class TritonUnavailable(RuntimeError):
    """Triton cannot be reached (or timed out)."""


class TritonRejected(RuntimeError):
    """Triton answered with an error for this model or request."""


class ContextLengthExceeded(TritonRejected):
    """The model refused the request: prompt tokens + max_tokens exceed its context."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"context_length_exceeded: {detail}")
        self.detail = detail


class InvalidRequest(TritonRejected):
    """The model refused the request as malformed for it (e.g. messages its chat template refuses)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"invalid_request: {detail}")
        self.detail = detail


# The runtime's coded errors (docs/serving.md): "<code>: <detail>", possibly behind a prefix Triton adds.
_CODED = re.compile(r"\b(context_length_exceeded|invalid_request):\s*(.*)", re.DOTALL)
# gRPC statuses that mean "Triton is away or too slow", not "Triton refused this".
_AWAY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_AWAY_NAMES = {str(code) for code in _AWAY}
# Raw tensor contents: little-endian, one element per [1, 1] input.
_UINT32, _INT32, _INT64, _FP32 = struct.Struct("<I"), struct.Struct("<i"), struct.Struct("<q"), struct.Struct("<f")
_SHAPE = (1, 1)


@dataclass(frozen=True)
class GenerationRequest:
    """One request row of the Triton model contract: exactly one of ``prompt`` and ``messages``."""

    prompt: str | None = None
    messages: Sequence[Mapping[str, str]] | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    stream: bool = False

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of prompt and messages")

    @property
    def chat(self) -> bool:
        return self.messages is not None

    def prompt_text(self) -> str:
        """``PROMPT``: the prompt, or the JSON-encoded messages list for chat."""
        if self.messages is not None:
            return json.dumps([dict(m) for m in self.messages], ensure_ascii=False)
        assert self.prompt is not None
        return self.prompt


@dataclass(frozen=True)
class Delta:
    """One response of a generation: new text, and the counts so far."""

    text: str
    finish_reason: str | None  # None until the last response: then "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    batch_size: int


@dataclass(frozen=True)
class Generation:
    """A whole generation (the deltas joined)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ModelStatistics:
    """Triton's cumulative counters for one loaded model version (since it was loaded)."""

    name: str
    success_count: int
    queue_count: int
    queue_ns: int
    execution_count: int
    inference_count: int
    batches: dict[int, int] = field(default_factory=dict)  # batch size -> executions of that size


def _bytes_element(value: bytes) -> bytes:
    """One BYTES tensor element in Triton's raw encoding: a little-endian uint32 length, then the bytes."""
    return _UINT32.pack(len(value)) + value


def _request(name: str, request: GenerationRequest) -> service_pb2.ModelInferRequest:
    """The contract's inputs (docs/serving.md) as one ``ModelInferRequest``: every input a ``[1, 1]``
    tensor in ``raw_input_contents`` (little-endian), as tritonclient would send them, without the
    numpy arrays and ``InferInput`` objects it builds them from."""
    stop = json.dumps(list(request.stop), ensure_ascii=False).encode()
    rows: tuple[tuple[str, str, bytes], ...] = (
        ("PROMPT", "BYTES", _bytes_element(request.prompt_text().encode())),
        ("CHAT", "BOOL", b"\x01" if request.chat else b"\x00"),
        ("MAX_TOKENS", "INT32", _INT32.pack(request.max_tokens)),
        ("TEMPERATURE", "FP32", _FP32.pack(request.temperature)),
        ("TOP_P", "FP32", _FP32.pack(request.top_p)),
        ("SEED", "INT64", _INT64.pack(-1 if request.seed is None else request.seed)),
        ("STOP", "BYTES", _bytes_element(stop)),
        ("STREAM", "BOOL", b"\x01" if request.stream else b"\x00"),
    )
    message = service_pb2.ModelInferRequest(model_name=name)
    for input_name, datatype, raw in rows:
        tensor = message.inputs.add()
        tensor.name, tensor.datatype = input_name, datatype
        tensor.shape.extend(_SHAPE)
        message.raw_input_contents.append(raw)
    return message


def _first_element(datatype: str, raw: bytes) -> Any:
    """The first element of a raw output tensor of a type the contract uses; None for another type."""
    if datatype == "BYTES":
        (length,) = _UINT32.unpack_from(raw)
        return raw[4 : 4 + length]
    if datatype == "INT32":
        return _INT32.unpack_from(raw)[0]
    if datatype == "INT64":
        return _INT64.unpack_from(raw)[0]
    return None


def _outputs(response: service_pb2.ModelInferResponse) -> dict[str, Any]:
    """Each output's first element, by name, read from the raw output contents."""
    values: dict[str, Any] = {}
    if len(response.raw_output_contents) == len(response.outputs):
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
            try:
                values[output.name] = _first_element(output.datatype, raw)
            except struct.error:
                values[output.name] = None
    missing = [o.name for o in response.outputs if values.get(o.name) is None]
    if missing:  # typed contents, or a type read above does not cover: tritonclient reads them
        result = InferResult(response)
        for output_name in missing:
            value = result.as_numpy(output_name)
            if value is not None and value.size:
                values[output_name] = value.reshape(-1)[0]
    return values


def _scalar(outputs: Mapping[str, Any], name: str) -> Any:
    value = outputs.get(name)
    if value is None:
        raise TritonRejected(f"triton response without {name} (not the lmforge model contract)")
    return value


def _delta(response: service_pb2.ModelInferResponse) -> Delta:
    outputs = _outputs(response)
    text = _scalar(outputs, "TEXT")
    finish = _scalar(outputs, "FINISH_REASON")
    finish = finish.decode() if isinstance(finish, bytes) else str(finish)
    return Delta(
        text=text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text),
        finish_reason=finish or None,
        prompt_tokens=int(_scalar(outputs, "PROMPT_TOKENS")),
        completion_tokens=int(_scalar(outputs, "COMPLETION_TOKENS")),
        batch_size=int(_scalar(outputs, "BATCH_SIZE")),
    )


def _model_error(what: str, message: str) -> TritonRejected:
    """A model's error response: the coded ones (the runtime's contract) keep their code."""
    coded = _CODED.search(message)
    if coded is None:
        return TritonRejected(f"triton {what}: {message}")
    code, detail = coded.group(1), coded.group(2).strip()
    return ContextLengthExceeded(detail) if code == "context_length_exceeded" else InvalidRequest(detail)


class TritonModels:
    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self._client: triton_grpc.InferenceServerClient | None = None

    @property
    def client(self) -> triton_grpc.InferenceServerClient:
        """The one client of this service (made on first use, in the running event loop)."""
        if self._client is None:
            self._client = triton_grpc.InferenceServerClient(self.settings.triton_grpc_url)
        return self._client

    @property
    def _stub(self) -> Any:
        """The pooled client's gRPC stub (``GRPCInferenceServiceStub`` on its one channel)."""
        return self.client._client_stub

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _unavailable(self, what: str, exc: BaseException) -> TritonUnavailable:
        return TritonUnavailable(f"triton {what} at {self.settings.triton_grpc_url}: {exc}")

    def _map(self, what: str, exc: Exception) -> Exception:
        if isinstance(exc, InferenceServerException):
            if exc.status() in _AWAY_NAMES:
                return self._unavailable(what, exc)
            return _model_error(what, str(exc.message()))
        if isinstance(exc, grpc.aio.AioRpcError):
            if exc.code() in _AWAY:
                return self._unavailable(what, exc.details() or exc.code())
            return _model_error(what, exc.details() or str(exc.code()))
        return self._unavailable(what, exc)

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except (TritonRejected, TritonUnavailable):
            raise
        except Exception as exc:  # gRPC errors, refused connections, timeouts
            raise self._map(what, exc) from exc

    async def load(self, name: str) -> None:
        await self._call(f"load {name}", self.client.load_model(name, client_timeout=self.settings.load_timeout_s))

    async def unload(self, name: str) -> None:
        await self._call(f"unload {name}", self.client.unload_model(name, client_timeout=30))

    async def instance_kind(self, name: str) -> str:
        """Where Triton placed a loaded model's instances (``KIND_CPU``/``KIND_GPU``), as it reports it."""
        config = await self._call(f"config {name}", self.client.get_model_config(name, as_json=True, client_timeout=10))
        return str(config["config"]["instance_group"][0]["kind"])

    async def is_ready(self, name: str) -> bool:
        try:
            return bool(await self._call(f"ready {name}", self.client.is_model_ready(name, client_timeout=5)))
        except (TritonRejected, TritonUnavailable):
            return False

    async def server_live(self) -> bool:
        """Triton answers. Not its ``ready``: in strict readiness (its default) that turns false
        for good once any model was unloaded or failed, which every promotion does."""
        try:
            return bool(await self._call("health", self.client.is_server_live(client_timeout=3)))
        except (TritonRejected, TritonUnavailable):
            return False

    async def statistics(self, name: str = "") -> list[ModelStatistics]:
        """Cumulative counters of one model (``name``) or of every loaded model (``""``)."""
        raw = await self._call(
            f"statistics {name or '*'}", self.client.get_inference_statistics(name, as_json=True, client_timeout=10)
        )
        out = []
        for m in raw.get("model_stats", []):
            stats = m.get("inference_stats", {})
            out.append(
                ModelStatistics(
                    name=m["name"],
                    success_count=int(stats.get("success", {}).get("count", 0)),
                    queue_count=int(stats.get("queue", {}).get("count", 0)),
                    queue_ns=int(stats.get("queue", {}).get("ns", 0)),
                    execution_count=int(m.get("execution_count", 0)),
                    inference_count=int(m.get("inference_count", 0)),
                    batches={
                        int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0))
                        for b in m.get("batch_stats", [])
                    },
                )
            )
        return out

    async def generate(self, name: str, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """The model's responses as they come: text deltas, the last one with a finish reason.

        Raises ``ContextLengthExceeded``/``InvalidRequest`` for the runtime's coded refusals,
        ``TritonRejected`` for other errors, ``TritonUnavailable`` when Triton is away or slower
        than ``infer_timeout_s``. Leaving the iteration early cancels the request in Triton.
        """
        # Not the current span: the caller may iterate this generator from another task (a
        # streamed HTTP answer), where a context attached here could not be detached.
        span = tracer().start_span(
            f"triton infer {name}",
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "inference.GRPCInferenceService",
                "rpc.method": "ModelStreamInfer",
                "server.address": self.settings.triton_grpc_url,
                "lmforge.triton_model": name,
                "lmforge.stream": request.stream,
            },
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        message = _request(name, request)
        started = time.perf_counter()
        first_at: float | None = None
        batch_size = 0
        call = None
        try:
            try:
                # The stream of the pooled client's channel, written to directly: the request, then
                # the end of the client's side (tritonclient's stream_infer would run a task to
                # read an async iterator of requests and build them from numpy arrays).
                call = self._stub.ModelStreamInfer(
                    metadata=tuple(carrier.items()), timeout=self.settings.infer_timeout_s
                )
                await call.write(message)
                await call.done_writing()
                async for response in call:
                    if response.error_message:
                        raise _model_error(f"infer {name}", response.error_message)
                    delta = _delta(response.infer_response)
                    first_at = first_at or time.perf_counter()
                    batch_size = max(batch_size, delta.batch_size)
                    if delta.finish_reason is not None:
                        elapsed = time.perf_counter() - started
                        metrics.observe_generation(
                            name,
                            stream=request.stream,
                            first_token_s=first_at - started,
                            seconds=elapsed,
                            completion_tokens=delta.completion_tokens,
                            batch_size=batch_size,
                        )
                        span.set_attributes(
                            {
                                "lmforge.prompt_tokens": delta.prompt_tokens,
                                "lmforge.completion_tokens": delta.completion_tokens,
                                "lmforge.finish_reason": delta.finish_reason,
                                "lmforge.batch_size": batch_size,
                            }
                        )
                        yield delta
                        return
                    yield delta
            except (TritonRejected, TritonUnavailable):
                raise
            except Exception as exc:
                raise self._map(f"infer {name}", exc) from exc
            raise TritonRejected(f"triton infer {name}: the stream ended without a finish reason")
        except BaseException as exc:
            if isinstance(exc, Exception):
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            if call is not None:
                call.cancel()  # a no-op once the request finished; else Triton stops generating
            span.end()

    async def complete(self, name: str, request: GenerationRequest) -> Generation:
        """The whole answer of one generation (its deltas joined)."""
        parts: list[str] = []
        async with contextlib.aclosing(self.generate(name, request)) as deltas:
            async for delta in deltas:
                parts.append(delta.text)
                if delta.finish_reason is not None:
                    return Generation("".join(parts), delta.finish_reason, delta.prompt_tokens, delta.completion_tokens)
        raise TritonRejected(f"triton infer {name}: no answer")  # generate raises first
