"""Routing from memory (``routing.py``): ``/generate`` reads the deployments table once, and every
write the reconciler makes (its consumer's alias moves, deployments) is seen by the next request.

- Lookups are answered from one snapshot; an alias move handled by the model-events consumer and a
  deployment each invalidate it; a read that raced an invalidation is not kept; the TTL bounds a
  snapshot's life; ``0`` reads on every lookup.
- A promotion invalidates the routing before the replaced version is unloaded (a stand-in Triton
  checks it at the unload), and, on the real Triton through the service's HTTP API, the request
  right after an alias move handled by the consumer is answered by the new version.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import AliasMovedV1, Event
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.devstack.servers import TritonServer, free_port
from lmforge.inference import store
from lmforge.inference.handlers import LifecycleHandler
from lmforge.inference.model_repository import ModelRepository
from lmforge.inference.models import metadata, outbox
from lmforge.inference.reconciler import Reconciler
from lmforge.inference.routing import Routing
from lmforge.inference.settings import InferenceSettings
from lmforge.inference.triton import Generation, TritonModels

from ..helpers import INTERNAL_AUTH
from .test_serving_api import inference_settings, running, save_model


def alias_moved(model: str, version: int, artifact_uri: str, offset: int = 0) -> InboundMessage:
    value, headers = Event(
        data=AliasMovedV1(
            model_name=model,
            alias="production",
            version=version,
            previous_version=version - 1 or None,
            artifact_uri=artifact_uri,
            reason="promote",
        ),
        source="tests",
    ).to_kafka()
    return InboundMessage("model-events", 0, offset or version, model.encode(), value, tuple(headers), 0)


class StandInTriton:
    """Loads and answers anything; at every unload, records what the routing says then."""

    def __init__(self) -> None:
        self.routing: Routing | None = None
        self.unloaded: list[tuple[str, Any]] = []

    async def load(self, name: str) -> None:
        return None

    async def is_ready(self, name: str) -> bool:
        return False

    async def complete(self, name: str, request: Any) -> Generation:
        return Generation("hi", "length", 1, 1)

    async def unload(self, name: str) -> None:
        assert self.routing is not None
        self.unloaded.append((name, await self.routing.deployment("m", "production")))


class StandInRelay:
    def wake(self) -> None:
        return None


@pytest.fixture
async def db(tmp_path: Path) -> Any:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/inference.db")
    await database.create_all(metadata)
    yield database
    await database.dispose()


def reconciler_on(db: Database, tmp_path: Path, triton: Any, relay: Any, **settings: Any) -> Reconciler:
    values: dict[str, Any] = {
        "triton_grpc_url": f"127.0.0.1:{free_port()}",
        "model_repository": str(tmp_path / "repo"),
        "internal": INTERNAL_AUTH,
    }
    config = InferenceSettings(**values | settings)
    return Reconciler(config, db, ModelRepository(config, ArtifactStore(str(tmp_path / "a"))), triton, relay)


def weights(tmp_path: Path, version: int) -> str:
    folder = tmp_path / f"weights-v{version}"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"n_positions": 64}')
    return ArtifactStore(str(tmp_path / "a")).put_dir(folder, f"m/v{version}")


async def test_lookups_share_one_read_and_the_consumers_alias_moves_invalidate_it(db: Database, tmp_path: Path) -> None:
    relay = OutboxRelay(outbox, db.sessions, EventProducer(KafkaSettings(), source="tests"))  # never started
    away = TritonModels(InferenceSettings(triton_grpc_url=f"127.0.0.1:{free_port()}", internal=INTERNAL_AUTH))
    reconciler = reconciler_on(db, tmp_path, away, relay)
    routing = reconciler.routing
    handler = LifecycleHandler(db, "lmforge-inference", reconciler)
    assert await routing.deployment("m", "production") is None
    await handler(alias_moved("m", 1, weights(tmp_path, 1)))  # Triton away: desired, not serving
    for _ in range(3):
        row = await routing.deployment("m", "production")
        assert row is not None and (row.desired_version, row.serving_version, row.state) == (1, None, "pending")
    assert routing.reads == 2, "one read before the event, one after it"
    await handler(alias_moved("m", 2, weights(tmp_path, 2)))
    row = await routing.deployment("m", "production")
    assert row is not None and row.desired_version == 2
    assert routing.reads == 3


async def test_a_promotion_is_routed_before_the_replaced_version_is_unloaded(db: Database, tmp_path: Path) -> None:
    triton = StandInTriton()
    reconciler = reconciler_on(db, tmp_path, triton, StandInRelay())
    triton.routing = reconciler.routing
    await reconciler.set_desired("m", "production", 1, weights(tmp_path, 1))
    await reconciler.reconcile()
    row = await reconciler.routing.deployment("m", "production")
    assert row is not None and (row.serving_version, row.triton_model, row.context_length) == (1, "m-v1", 64)
    served = await reconciler.routing.serving_version("m", 1)
    assert served is not None and served.alias == "production"

    await reconciler.set_desired("m", "production", 2, weights(tmp_path, 2))
    await reconciler.reconcile()
    # When v1 was unloaded, the routing already answered v2.
    assert [(name, seen.serving_version) for name, seen in triton.unloaded] == [("m-v1", 2)]
    assert await reconciler.routing.serving_version("m", 1) is None
    served = await reconciler.routing.serving_version("m", 2)
    assert served is not None and served.triton_model == "m-v2"


async def test_a_read_that_raced_an_invalidation_is_not_kept(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler = reconciler_on(db, tmp_path, StandInTriton(), StandInRelay())
    routing = reconciler.routing
    read_begun, write_done = asyncio.Event(), asyncio.Event()
    list_deployments = store.list_deployments

    async def slow_read(database: Database) -> list[Any]:
        rows = await list_deployments(database)  # the table before the write
        read_begun.set()
        await write_done.wait()
        return rows

    monkeypatch.setattr(store, "list_deployments", slow_read)
    lookup = asyncio.create_task(routing.deployment("m", "production"))
    await read_begun.wait()
    await reconciler.set_desired("m", "production", 1, "file:///m/v1")  # commits, then invalidates
    write_done.set()
    assert await lookup is None  # that request saw the table as it was when it read it
    monkeypatch.setattr(store, "list_deployments", list_deployments)
    row = await routing.deployment("m", "production")  # the stale read was not kept
    assert row is not None and row.desired_version == 1


async def test_the_ttl_bounds_a_snapshot_and_zero_reads_every_time(db: Database, tmp_path: Path) -> None:
    reconciler = reconciler_on(db, tmp_path, StandInTriton(), StandInRelay(), routing_cache_ttl_s=0.2)
    assert InferenceSettings(internal=INTERNAL_AUTH).routing_cache_ttl_s == 10.0  # the default the docs give
    routing = reconciler.routing
    await routing.deployment("m", "production")
    await routing.deployment("m", "production")
    assert routing.reads == 1
    await asyncio.sleep(0.25)
    await routing.deployment("m", "production")
    assert routing.reads == 2
    uncached = Routing(db, ttl_s=0)
    for _ in range(3):
        await uncached.deployment("m", "production")
    assert uncached.reads == 3


async def test_the_request_after_an_alias_move_is_answered_by_the_new_version(
    triton: TritonServer, kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    model = f"m{unique}"
    async with running(inference_settings(triton, kafka_settings, tmp_path, unique)) as inference:
        handler = LifecycleHandler(inference.reconciler.db, f"routing-{unique}", inference.reconciler)
        v1 = save_model(inference.store, "models/m/run-1")
        v2 = save_model(inference.store, "models/m/run-2")
        await handler(alias_moved(model, 1, v1))
        routing = inference.app.state.routing
        reads = routing.reads
        for i in range(5):
            r = await inference.generate(model=model, prompt=f"hello {i}", max_tokens=2)
            assert r.status_code == 200 and r.headers["X-Lmforge-Model-Version"] == f"{model}@v1", r.text
        assert routing.reads - reads <= 1, "the requests share one read of the routing"

        await handler(alias_moved(model, 2, v2))  # the consumer's path: desired state, then reconcile
        assert not await inference.triton.is_ready(f"{model}-v1")  # v1 is gone from Triton
        asked: list[str] = []
        generate = inference.triton.generate

        def recording(name: str, request: Any) -> Any:
            asked.append(name)
            return generate(name, request)

        inference.triton.generate = recording  # type: ignore[method-assign]
        for stream in (False, True):
            r = await inference.generate(model=model, prompt=f"after the move {stream}", max_tokens=2, stream=stream)
            assert r.status_code == 200, r.text
            assert r.headers["X-Lmforge-Model-Version"] == f"{model}@v2"
        assert asked == [f"{model}-v2"] * 2, "routed to v2 at once, not retried after asking the unloaded v1"
