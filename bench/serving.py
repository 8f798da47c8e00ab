"""Serving benchmarks on a real CPU Triton, each against its baseline in the same run.

1. ``serving overhead``: 200 sequential short completions through the gateway (auth, rate
   limits, quota, the inference service, the pooled gRPC client) against direct ``tritonclient``
   gRPC calls to the same Triton model with the same inputs. Every prompt is distinct, so the
   response cache never answers: both sides generate.
2. ``serving batching``: requests/s at concurrency 16, straight to Triton, for the same weights
   loaded twice: with dynamic batching (``max_batch_size`` 16) and without (``max_batch_size`` 1:
   one request per ``execute``).
3. ``serving slo``: concurrency 16 through the gateway for ``--slo-seconds`` (60 by default):
   mean and p99 latency, requests/s and the error rate.

The model is a randomly initialised 2-layer GPT-2 (n_embd 64, 256 positions) with a BPE
tokenizer: the builtin model's shape (``lmforge.devstack.model_seed``). Each request asks for
``--max-tokens`` new tokens (8 by default) and, the weights being untrained, generation runs to
that length unless it draws the end-of-text token.

    .venv/bin/python bench/serving.py [--requests 200] [--slo-seconds 60] [--max-tokens 8]
        [--only overhead|batching|slo ...]

``--only`` runs the parts named (repeatable; all three by default), e.g. ``--only overhead`` to
rerun the overhead figure alone.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc.aio as grpcclient

from lmforge.common.artifacts import ArtifactStore
from lmforge.devstack.model_seed import publish_model, save_small_gpt2
from lmforge.devstack.stack import Stack
from lmforge.inference.model_repository import ModelRepository
from lmforge.inference.settings import InferenceSettings

MODEL = "bench-assistant"
PARTS = ("overhead", "batching", "slo")
CORPUS = [
    f"Customer: {q} Agent: {a}"
    for q, a in [
        ("Where is my refund?", "Refunds reach your card within five business days."),
        ("How do I reset my password?", "Open Settings, choose Reset password and follow the link."),
        ("Where is my order?", "Orders ship within two days; the tracking number is emailed."),
        ("I need my invoice.", "Invoices are under Billing, then Invoices."),
    ]
] * 10


def prompt(i: int, run: str) -> str:
    return f"Customer: ticket {i} of run {run}: where is my refund? Agent:"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# --- direct Triton ---------------------------------------------------------------------------


def triton_inputs(text: str, max_tokens: int) -> list[grpcclient.InferInput]:
    spec: list[tuple[str, str, object]] = [
        ("PROMPT", "BYTES", np.array([[text.encode()]], dtype=np.object_)),
        ("CHAT", "BOOL", np.array([[False]], dtype=bool)),
        ("MAX_TOKENS", "INT32", np.array([[max_tokens]], dtype=np.int32)),
        ("TEMPERATURE", "FP32", np.array([[0.0]], dtype=np.float32)),
        ("TOP_P", "FP32", np.array([[1.0]], dtype=np.float32)),
        ("SEED", "INT64", np.array([[-1]], dtype=np.int64)),
        ("STOP", "BYTES", np.array([[b"[]"]], dtype=np.object_)),
        ("STREAM", "BOOL", np.array([[False]], dtype=bool)),
    ]
    inputs = []
    for name, dtype, value in spec:
        tensor = grpcclient.InferInput(name, [1, 1], dtype)
        tensor.set_data_from_numpy(value)  # type: ignore[arg-type]
        inputs.append(tensor)
    return inputs


async def triton_generate(client: grpcclient.InferenceServerClient, model: str, text: str, max_tokens: int) -> str:
    """One request over the decoupled model's gRPC stream; the concatenated text."""

    async def requests():  # type: ignore[no-untyped-def]
        yield {"model_name": model, "inputs": triton_inputs(text, max_tokens)}

    out = []
    async for result, error in client.stream_infer(requests()):
        if error is not None:
            raise RuntimeError(str(error))
        out.append(result.as_numpy("TEXT")[0][0].decode())
        if result.as_numpy("FINISH_REASON")[0][0]:
            break
    return "".join(out)


# --- load generators ---------------------------------------------------------------------------


async def sequential(call: Callable[[int], Awaitable[object]], n: int) -> list[float]:
    latencies = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


async def concurrent(
    call: Callable[[int], Awaitable[object]], concurrency: int, *, requests: int = 0, seconds: float = 0
) -> tuple[list[float], int, float]:
    """``concurrency`` workers calling back to back: for ``requests`` calls, or for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds if seconds else None

    async def worker() -> None:
        nonlocal errors
        while True:
            i = next(counter)
            if (deadline is None and i >= requests) or (deadline is not None and time.perf_counter() > deadline):
                return
            t0 = time.perf_counter()
            try:
                await call(i)
            except Exception:  # noqa: BLE001 - counted; the run goes on
                errors += 1
                continue
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - t0


# --- the run ---------------------------------------------------------------------------------


def wait_served(gateway: httpx.Client, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = gateway.post("/v1/completions", json={"model": MODEL, "prompt": "Customer: hi Agent:", "max_tokens": 1})
        if r.status_code == 200:
            return
        time.sleep(1)
    raise TimeoutError(f"{MODEL} was not served within {timeout}s: {r.status_code} {r.text[:300]}")


async def run(args: argparse.Namespace, stack: Stack, weights: Path) -> None:
    assert stack.triton is not None
    run_id = f"{time.time_ns() % 10**8:x}"
    headers = {"Authorization": f"Bearer {stack.admin_key}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(base_url=stack.gateway_url, headers=headers, timeout=60, limits=limits) as gateway,
        grpcclient.InferenceServerClient(f"127.0.0.1:{stack.triton.grpc_port}") as triton,
    ):
        served = (await gateway.get(f"/v1/models/{MODEL}")).json()
        print(f"serving {served['id']} ({len(CORPUS)}-line corpus, max_tokens {args.max_tokens})")
        triton_model = (
            await gateway.post(
                "/v1/completions", json={"model": MODEL, "prompt": "Customer: hi Agent:", "max_tokens": 1}
            )
        ).json()["lmforge"]["triton_model"]

        async def via_gateway(i: int, tag: str = "o") -> None:
            r = await gateway.post(
                "/v1/completions",
                json={"model": MODEL, "prompt": prompt(i, run_id + tag), "max_tokens": args.max_tokens},
            )
            r.raise_for_status()

        async def direct(i: int, model: str = triton_model, tag: str = "d") -> None:
            await triton_generate(triton, model, prompt(i, run_id + tag), args.max_tokens)

        if "overhead" in args.only:
            await overhead(args, stack, via_gateway, direct)
        if "batching" in args.only:
            await batching(args, stack, weights, triton, direct, run_id)
        if "slo" in args.only:
            await slo(args, via_gateway)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children's live processes (Linux ``/proc``; 0 elsewhere)."""
    total = 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_seconds(int(child))
    except (OSError, ValueError, IndexError):
        pass
    return total


def processes(stack: Stack) -> dict[str, int]:
    assert stack.triton is not None and stack.triton.proc is not None
    pids = {name: stack.services[name].proc.pid for name in ("gateway", "inference")}  # type: ignore[union-attr]
    return pids | {"triton": stack.triton.proc.pid}


async def overhead(
    args: argparse.Namespace,
    stack: Stack,
    via_gateway: Callable[[int], Awaitable[None]],
    direct: Callable[[int], Awaitable[None]],
) -> None:
    """1. overhead: warm both paths, then interleave nothing: two sequential runs. Also the CPU
    each process spent per request of the gateway run (Triton: with its model processes)."""
    await sequential(via_gateway, 10)
    await sequential(direct, 10)
    pids = processes(stack)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    g = await sequential(via_gateway, args.requests)
    spent = {name: (cpu_seconds(pid) - before[name]) * 1000 / args.requests for name, pid in pids.items()}
    d = await sequential(direct, args.requests)
    gp50, dp50 = statistics.median(g), statistics.median(d)
    print(f"  gateway p90 {percentile(g, 90):.2f} ms; triton p90 {percentile(d, 90):.2f} ms")
    print("  cpu per request through the gateway: " + ", ".join(f"{k} {v:.2f} ms" for k, v in spent.items()))
    print(f"serving overhead: gateway p50 {gp50:.2f} ms vs triton p50 {dp50:.2f} ms, overhead {gp50 - dp50:.2f} ms")


async def batching(
    args: argparse.Namespace,
    stack: Stack,
    weights: Path,
    triton: grpcclient.InferenceServerClient,
    direct: Callable[..., Awaitable[None]],
    run_id: str,
) -> None:
    """2. batching: the same weights as two more Triton models, batched and unbatched."""
    assert stack.triton is not None
    store = ArtifactStore(str(stack.workdir / "bench-artifacts"))
    uri = store.put_dir(weights, "bench/weights")
    rates = {}
    for label, batch in (("batched", 16), ("unbatched", 1)):
        settings = InferenceSettings(
            model_repository=str(stack.triton.model_repository), max_batch_size=batch, instance_kind="cpu"
        )
        name = f"bench-{label}-{run_id}"
        ModelRepository(settings, store).write_version(name, uri)
        await triton.load_model(name)
        await concurrent(functools.partial(direct, model=name, tag="w" + label), 16, requests=32)
        lat, errors, elapsed = await concurrent(
            functools.partial(direct, model=name, tag=label), 16, requests=args.batch_requests
        )
        rates[label] = len(lat) / elapsed
        stats = await triton.get_inference_statistics(name, as_json=True)
        sizes = {
            int(b["batch_size"]): int(b["compute_infer"]["count"])
            for b in stats["model_stats"][0].get("batch_stats", [])
        }
        print(
            f"  {label}: {rates[label]:.1f} req/s, p50 {statistics.median(lat):.1f} ms, errors {errors}, "
            f"executions by batch size {sizes}"
        )
        await triton.unload_model(name)
    print(
        f"serving batching: {rates['batched']:.1f} req/s at concurrency 16 vs {rates['unbatched']:.1f} req/s "
        f"unbatched, gain {rates['batched'] / rates['unbatched']:.2f}x"
    )


async def slo(args: argparse.Namespace, via_gateway: Callable[..., Awaitable[None]]) -> None:
    """3. SLO through the gateway."""
    lat, errors, elapsed = await concurrent(lambda i: via_gateway(i, "s"), 16, seconds=args.slo_seconds)
    total = len(lat) + errors
    print(
        f"serving slo: mean {statistics.fmean(lat):.1f} ms, p99 {percentile(lat, 99):.1f} ms, "
        f"{len(lat) / elapsed:.1f} req/s, errors {100 * errors / max(total, 1):.2f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch-requests", type=int, default=320)
    parser.add_argument("--slo-seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable); all of them by default",
    )
    args = parser.parse_args()
    args.only = args.only or list(PARTS)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        weights = save_small_gpt2(Path(tmp) / "weights", CORPUS)
        # Generous rate limits: the benchmark measures serving, not the per-key budget.
        env = {
            "LMFORGE_GATEWAY_REQUESTS_PER_MINUTE": "1000000",
            "LMFORGE_GATEWAY_COMPLETION_TOKENS_PER_DAY": "1000000000",
            "LMFORGE_INFERENCE_MAX_BATCH_SIZE": "16",
        }
        with Stack(Path(tmp) / "stack", only=("registry", "inference", "gateway"), extra_env=env) as stack:
            asyncio.run(publish_model(stack, MODEL, weights))
            with httpx.Client(
                base_url=stack.gateway_url, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=60
            ) as gateway:
                wait_served(gateway)
            asyncio.run(run(args, stack, weights))


if __name__ == "__main__":
    main()
