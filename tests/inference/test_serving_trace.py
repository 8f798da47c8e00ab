"""Trace propagation over the pooled gRPC client: a generation's ``triton infer`` client span is
the parent of Triton's own request span (its traceparent travels as gRPC stream metadata), on a
Triton that exports its spans over OTLP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.telemetry import tracer
from lmforge.devstack.servers import TritonServer
from lmforge.inference.model_repository import ModelRepository
from lmforge.inference.settings import InferenceSettings
from lmforge.inference.triton import GenerationRequest, TritonModels

from ..e2e.otlp_receiver import OtlpReceiver
from .test_reconcile import grpc_url, save_tiny_model


async def test_tritons_spans_continue_the_client_span(
    span_exporter: InMemorySpanExporter, tmp_path: Path, unique: str
) -> None:
    receiver = OtlpReceiver().start()
    server = TritonServer(tmp_path / "triton", tmp_path / "models", otlp_endpoint=receiver.endpoint)
    try:
        await asyncio.to_thread(server.start)
        settings = InferenceSettings(triton_grpc_url=grpc_url(server), model_repository=str(server.model_repository))
        store = ArtifactStore(str(tmp_path / "artifacts"))
        name = f"t{unique}-v1"
        ModelRepository(settings, store).write_version(name, save_tiny_model(store, "models/t/run-1"))
        models = TritonModels(settings)
        try:
            await models.load(name)
            with tracer().start_as_current_span(f"caller-{unique}") as caller:
                await models.complete(name, GenerationRequest(prompt="hello", max_tokens=2, stream=True))
        finally:
            await models.close()
        trace_id = format(caller.get_span_context().trace_id, "032x")
        client = next(
            s
            for s in span_exporter.get_finished_spans()
            if s.name == f"triton infer {name}" and format(s.context.trace_id, "032x") == trace_id
        )
        assert client.parent is not None and client.parent.span_id == caller.get_span_context().span_id
        assert client.attributes is not None and client.attributes["lmforge.completion_tokens"] >= 1
        # Triton exports its request span last (after the model's and the compute span).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(s.name == "InferRequest" for s in receiver.trace(trace_id)):
            await asyncio.sleep(0.2)
        request = next(s for s in receiver.trace(trace_id) if s.name == "InferRequest" and s.service == "triton")
        assert request.parent_span_id == format(client.context.span_id, "016x")
    finally:
        await asyncio.to_thread(server.stop)
        receiver.stop()
