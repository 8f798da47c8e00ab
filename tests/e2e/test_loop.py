"""The whole loop with every service as its own process, on real Tansu, PostgreSQL and Triton.

Records in (HTTP through the gateway, and an upstream Kafka topic), a dataset version, training,
registration and promotion, deployment into Triton, and an answer out; checked through the public
API, the dead-letter topic, and the spans the services export over OTLP to a receiver of our own.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator

import httpx
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaProducer

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.events import dead_letter_topic
from lmforge.devstack.demo import DemoResult, run_demo
from lmforge.devstack.stack import Stack
from lmforge.devstack.support_corpus import chinese_tickets

from ..helpers import read_topic
from .otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack"), postgres=True, otlp_endpoint=otlp.endpoint) as running:
        yield running


async def _produce_upstream(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v, key=b"erp")
    finally:
        await producer.stop()


def _names(spans: list[ReceivedSpan]) -> set[tuple[str, str]]:
    return {(s.service, s.name) for s in spans}


def _wait_for_spans(
    otlp: OtlpReceiver, trace_id: str, wanted: set[tuple[str, str]], timeout: float = 20
) -> list[ReceivedSpan]:
    deadline = time.monotonic() + timeout
    while True:
        spans = otlp.trace(trace_id)
        if wanted <= _names(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.2)


def test_records_to_served_answer(stack: Stack, otlp: OtlpReceiver) -> None:
    assert stack.broker is not None
    bootstrap = stack.broker.bootstrap_servers
    api = httpx.Client(base_url=stack.gateway_url, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=60)

    # --- bad input never crashes anything, and nothing valid is lost -----------------------
    valid_upstream = {
        "source": "erp",
        "source_id": "E-1",
        "text": "Customer: Where is my invoice? Agent: Under Billing.",
    }
    asyncio.run(
        _produce_upstream(
            bootstrap,
            stack.upstream_topic,
            [
                b"{this is not json",
                json.dumps({"source": "erp", "source_id": "E-0"}).encode(),  # no text
                json.dumps(valid_upstream).encode(),
            ],
        )
    )
    dlq = asyncio.run(read_topic(bootstrap, dead_letter_topic(stack.upstream_topic), expected=2, timeout=60))
    reasons = sorted(dict(r.headers)["dlq.error"].decode() for r in dlq)
    assert len(dlq) == 2
    assert "not JSON" in reasons[0] or "not JSON" in reasons[1]
    assert any("text: Field required" in r for r in reasons)

    r = api.post(
        "/v1/records", json=[{"source": "crm", "source_id": "X", "text": "fine"}, {"source": "crm", "text": "no id"}]
    )
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("records[1].source_id")
    assert httpx.post(f"{stack.gateway_url}/v1/records", json={}).status_code == 401
    reader = api.post("/v1/api-keys", json={"name": "reader", "scopes": ["models:read"]}).json()["key"]
    assert (
        httpx.post(
            f"{stack.gateway_url}/v1/records", json={}, headers={"Authorization": f"Bearer {reader}"}
        ).status_code
        == 403
    )
    assert api.post("/v1/completions", json={"model": "nope", "prompt": "hi"}).status_code == 404
    oversized = api.post(
        "/v1/records", content=b"x" * (10 * 1024 * 1024 + 1), headers={"content-type": "application/json"}
    )
    assert oversized.status_code == 413 and oversized.json()["error"]["code"] == "payload_too_large"

    # --- the loop, as a user runs it ---------------------------------------------------------
    result: DemoResult = run_demo(stack.gateway_url, stack.admin_key, say=lambda _: None, records=200)
    # SmolLM2 fine-tuned on the tickets answers questions no record holds with their intent's answer.
    assert result.held_out_total >= 20
    assert result.held_out_correct >= 0.8 * result.held_out_total, (
        f"held-out: {result.held_out_correct}/{result.held_out_total} answers match the reference intent"
    )
    assert result.version >= 1

    # No valid record lost: every accepted record is cleaned or dropped with a named reason, and
    # the dataset versions of the three sources hold exactly the cleaned ones.
    stats = api.get("/v1/pipeline/stats").json()
    accepted = 200 + 20 + 1  # the HTTP corpora (all distinct ids) plus the valid upstream record
    erased = result.erasure
    assert erased["status"] == "applied" and erased["cleaned_records_erased"] == 1
    assert erased["dataset_versions"] == [{"dataset": result.zh_dataset[0], "version": result.zh_dataset[1]}]
    assert stats["cleaned"] + sum(stats["dropped"].values()) == accepted - 1, "all but the erased ticket"
    lineage = result.lineage
    ds = lineage["dataset"]
    assert ds["record_count"] == len(ds["record_ids"])
    erp = api.post("/v1/datasets/erp-orders/versions", json={"sources": ["erp"]}).json()
    assert erp["record_count"] == 1
    erp_manifest = api.get(f"/v1/datasets/erp-orders/versions/{erp['version']}").json()
    assert [r["record_id"] for r in erp_manifest["records"]] == ["erp:E-1"]
    zh_name, zh_version = result.zh_dataset
    zh = api.get(f"/v1/datasets/{zh_name}/versions/{zh_version}").json()
    assert ds["record_count"] + zh["record_count"] + erp["record_count"] == stats["cleaned"]

    # The Chinese tickets: every mobile number, resident ID, bank card and email is masked, in the
    # texts the trainer would read, and the order numbers, times and amounts are still there.
    # One of them was erased after the version was cut: the version holds the other 19.
    assert zh["record_count"] == 19
    assert erased["record_id"] not in {r["record_id"] for r in zh["records"]}
    assert result.zh_masked == {"phone": 19, "id_card": 19, "bank_card": 19, "email": 19}
    assert zh["sensitivity"].get("high") == 19
    store = ArtifactStore(str(stack.workdir / "artifacts"))
    shards = json.loads(store.read_bytes(f"datasets/{zh_name}/v{zh_version}/manifest.json"))["shards"]
    texts = [
        t
        for uri in shards.values()
        for t in pq.read_table(io.BytesIO(store.read_bytes(store.key_of(uri))))["text"].to_pylist()
    ]
    assert len(texts) == 19
    secrets = [value for _, values in chinese_tickets(20) for value in values]
    leaked = [v for v in secrets if any(v in t.replace(" ", "") for t in texts)]
    assert not leaked, leaked
    assert all("订单号2026" in t and "[ID_CARD]" in t and "[BANK_CARD]" in t for t in texts)

    # Lineage: answering version -> run -> dataset version -> record ids.
    job = api.get("/v1/registry/models").json()
    version = next(v for m in job if m["name"] == result.model for v in m["versions"] if v["version"] == result.version)
    assert version["run_id"] == lineage["run_id"]
    manifest = api.get(f"/v1/datasets/{ds['name']}/versions/{ds['version']}").json()
    assert [r["record_id"] for r in manifest["records"]] == ds["record_ids"]

    # --- one trace per journey, across every Kafka hop --------------------------------------
    t = result.trace_ids
    ingest_hop = {
        ("gateway", "POST /v1/records"),
        ("ingest", "raw-data publish"),
        ("preprocess", "raw-data process"),
        ("preprocess", "cleaned-data publish"),
    }
    spans = _wait_for_spans(otlp, t["ingest"], ingest_hop)
    assert ingest_hop <= _names(spans), sorted(_names(spans))

    training_hop = {
        ("gateway", "training-requests publish"),
        ("trainer", "training-requests process"),
        ("trainer", "training job"),
        ("trainer", "model-ready publish"),
        ("registry", "model-ready process"),
        ("registry", "model-events publish"),
        ("inference", "model-events process"),
        ("inference", "inference deploy"),
    }
    spans = _wait_for_spans(otlp, t["training"], training_hop)
    assert training_hop <= _names(spans), sorted(_names(spans))
    # The dataset-to-training fan-in is a span link to the trace that cut the dataset version.
    job_span = next(s for s in spans if s.name == "training job")
    assert t["dataset"] in job_span.links

    completion_hop = {("gateway", "POST /v1/completions"), ("inference", "POST /generate")}
    spans = _wait_for_spans(otlp, t["completion"], completion_hop)
    assert completion_hop <= _names(spans), sorted(_names(spans))
    client = next(s for s in spans if s.service == "inference" and s.name.startswith("triton infer"))
    # Triton's own spans continue the trace: its request span is a child of inference's client span.
    spans = _wait_for_spans(otlp, t["completion"], completion_hop | {("triton", "InferRequest")})
    triton_request = next(s for s in spans if (s.service, s.name) == ("triton", "InferRequest"))
    assert triton_request.parent_span_id == client.span_id
