"""The Triton client side: load and unload models, ask what is ready, run inference."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import tritonclient.http as triton_http
from opentelemetry.trace import SpanKind
from tritonclient.utils import InferenceServerException

from lmforge.common.telemetry import inject_context, tracer

from .settings import InferenceSettings


class TritonUnavailable(RuntimeError):
    """Triton cannot be reached (or timed out)."""


class TritonRejected(RuntimeError):
    """Triton answered with an error for this model or request."""


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int


class TritonModels:
    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings

    def _client(self, timeout: float) -> triton_http.InferenceServerClient:
        return triton_http.InferenceServerClient(
            self.settings.triton_url, connection_timeout=timeout, network_timeout=timeout
        )

    async def _call(self, what: str, fn, *args, timeout: float):  # type: ignore[no-untyped-def]
        def run():  # type: ignore[no-untyped-def]
            client = self._client(timeout)
            try:
                return fn(client, *args)
            finally:
                client.close()

        try:
            return await asyncio.to_thread(run)
        except InferenceServerException as exc:
            raise TritonRejected(f"triton {what}: {exc.message()}") from exc
        except Exception as exc:  # connection refused, timeouts, gevent/urllib errors
            raise TritonUnavailable(f"triton {what} at {self.settings.triton_url}: {exc}") from exc

    async def load(self, name: str) -> None:
        await self._call(f"load {name}", lambda c, n: c.load_model(n), name, timeout=self.settings.load_timeout_s)

    async def instance_kind(self, name: str) -> str:
        """Where Triton placed a loaded model's instances (``KIND_CPU``/``KIND_GPU``), as it reports it."""
        config = await self._call(f"config {name}", lambda c, n: c.get_model_config(n), name, timeout=10)
        return str(config["instance_group"][0]["kind"])

    async def unload(self, name: str) -> None:
        await self._call(f"unload {name}", lambda c, n: c.unload_model(n), name, timeout=30)

    async def is_ready(self, name: str) -> bool:
        try:
            return bool(await self._call(f"ready {name}", lambda c, n: c.is_model_ready(n), name, timeout=5))
        except (TritonRejected, TritonUnavailable):
            return False

    async def server_ready(self) -> bool:
        try:
            return bool(await self._call("health", lambda c: c.is_server_ready(), timeout=3))
        except (TritonRejected, TritonUnavailable):
            return False

    async def generate(self, name: str, prompt: str, max_tokens: int, temperature: float) -> Generation:
        with tracer().start_as_current_span(
            f"triton infer {name}",
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system": "kserve_v2",
                "server.address": self.settings.triton_url,
                "lmforge.triton_model": name,
            },
        ):
            headers = {k: v.decode() for k, v in inject_context([])}

            def infer(client: triton_http.InferenceServerClient) -> Generation:
                inputs = [
                    triton_http.InferInput("PROMPT", [1, 1], "BYTES"),
                    triton_http.InferInput("MAX_TOKENS", [1, 1], "INT32"),
                    triton_http.InferInput("TEMPERATURE", [1, 1], "FP32"),
                ]
                inputs[0].set_data_from_numpy(np.array([[prompt.encode()]], dtype=np.object_))
                inputs[1].set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
                inputs[2].set_data_from_numpy(np.array([[temperature]], dtype=np.float32))
                result = client.infer(name, inputs, headers=headers)
                return Generation(
                    text=result.as_numpy("TEXT")[0][0].decode("utf-8", "replace"),
                    prompt_tokens=int(result.as_numpy("PROMPT_TOKENS")[0][0]),
                    completion_tokens=int(result.as_numpy("COMPLETION_TOKENS")[0][0]),
                )

            return await self._call(f"infer {name}", infer, timeout=self.settings.infer_timeout_s)  # type: ignore[no-any-return]
