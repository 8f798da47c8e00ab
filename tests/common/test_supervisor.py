"""Supervised loops: restarted with backoff and counted; a loop down or stalled is not ready.

And the two loops every service has, under supervision: the outbox relay survives database
errors (a real SQLite database whose outbox table disappears for a while), and a service's
``/readyz`` turns 503 while one of its loops is down.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client import REGISTRY
from sqlalchemy import MetaData, text

from lmforge.common.db import Database, Outbox, OutboxRelay
from lmforge.common.events import dead_letter_topic
from lmforge.common.kafka import EventProducer
from lmforge.common.kafka.admin import ensure_topics
from lmforge.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings, SupervisionSettings
from lmforge.common.supervisor import Progress, Supervisor
from lmforge.ingest.app import build_app
from lmforge.ingest.settings import IngestSettings

from ..helpers import INTERNAL_AUTH, read_topic, wait_until
from .factories import raw_record


def _failures(service: str, loop: str) -> float:
    return REGISTRY.get_sample_value("lmforge_loop_failures_total", {"service": service, "loop": loop}) or 0.0


async def test_a_failing_loop_is_restarted_with_backoff_counted_and_not_ready_meanwhile(unique: str) -> None:
    service = f"svc-{unique}"
    runs = 0
    gate = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise ConnectionError("dependency away")
        await gate.wait()

    sup = Supervisor(service, restart_backoff_initial_s=0.3, restart_backoff_max_s=1.0)
    sup.add("flaky", flaky)
    sup.start()
    try:
        await asyncio.sleep(0.1)
        assert not sup.ready(), "down between a failure and its restart"
        assert sup.status()["flaky"]["last_error"] == "ConnectionError: dependency away"
        await wait_until(lambda: _true(runs == 3 and sup.ready()), timeout=5)
        assert _failures(service, "flaky") == 2
        assert sup.status()["flaky"]["failures"] == 2
    finally:
        await sup.stop()


async def test_a_loop_that_returns_is_restarted(unique: str) -> None:
    runs = 0

    async def returns_early() -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            await asyncio.Event().wait()

    sup = Supervisor(f"svc-{unique}", restart_backoff_initial_s=0.05)
    sup.add("returns", returns_early)
    sup.start()
    try:
        await wait_until(lambda: _true(runs == 2 and sup.ready()), timeout=5)
    finally:
        await sup.stop()


async def test_a_loop_alive_but_without_progress_while_work_waits_is_stalled(unique: str) -> None:
    progress = Progress()

    async def idle() -> None:
        await asyncio.Event().wait()

    sup = Supervisor(f"svc-{unique}", stall_timeout_s=0.2)
    sup.add("worker", idle, progress=progress)
    sup.start()
    try:
        await asyncio.sleep(0.05)
        assert sup.ready()
        progress.backlog(3)  # work waits ...
        await asyncio.sleep(0.3)
        assert not sup.ready() and sup.status()["worker"]["stalled"]  # ... and nothing moves
        progress.advanced()
        assert sup.ready()
        progress.backlog(0)
        await asyncio.sleep(0.3)
        assert sup.ready(), "nothing waiting is never stalled"
    finally:
        await sup.stop()


async def test_outbox_relay_survives_a_database_error(
    tmp_path: Path, kafka_settings: KafkaSettings, unique: str
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/relay.db")
    metadata = MetaData()
    outbox = Outbox(metadata, source="lmforge/tests")
    await db.create_all(metadata)
    topic = f"relay-db-{unique}"
    await ensure_topics(kafka_settings, [topic])
    async with EventProducer(kafka_settings, source="tests") as producer:
        relay = OutboxRelay(outbox, db.sessions, producer, poll_interval_s=0.05)
        async with db.engine.begin() as conn:  # the table goes away: every pass fails
            await conn.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
        sup = Supervisor(f"svc-{unique}")
        sup.add("outbox-relay", relay.run, progress=relay.progress)
        sup.start()
        try:
            await asyncio.sleep(0.5)
            assert sup.loops["outbox-relay"].running, "the relay keeps going through database errors"
            async with db.engine.begin() as conn:
                await conn.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))
            async with db.sessions.begin() as session:
                await outbox.add(session, topic, raw_record("r1"), key="crm:r1")
            relay.wake()
            records = await read_topic(kafka_settings.bootstrap_servers, topic, 1)
            assert len(records) == 1
        finally:
            relay.stop()
            await sup.stop()
            await db.dispose()


async def test_readyz_is_503_while_a_loop_is_down(tmp_path: Path, kafka_settings: KafkaSettings, unique: str) -> None:
    upstream = f"up-{unique}"
    await ensure_topics(kafka_settings, [upstream, dead_letter_topic(upstream)])
    app = build_app(
        IngestSettings(
            kafka=kafka_settings,
            database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path}/i.db"),
            artifacts=ArtifactSettings(url=str(tmp_path / "a")),
            internal=INTERNAL_AUTH,
            upstream_topics=[upstream],
            consumer_group=f"g-{unique}",
            supervision=SupervisionSettings(restart_backoff_initial_s=30),
        )
    )
    runtime = app.state.runtime
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest")
        await wait_until(lambda: _ready(client, 200))
        # Break one loop: its next pass raises, and the 30 s backoff keeps it down.
        loop = next(iter(runtime.supervisor.loops.values()))
        assert loop.task is not None

        async def broken() -> None:
            raise RuntimeError("broken on purpose")

        loop.factory = broken
        loop.task.cancel()
        runtime.supervisor.start()  # the supervisor task of that loop starts again, and fails
        await wait_until(lambda: _ready(client, 503), timeout=5)
        body = (await client.get("/readyz")).json()
        assert body["checks"]["loops"] is False and body["checks"]["database"] is True
        assert (await client.get("/healthz")).status_code == 200, "liveness ignores loops"
        await client.aclose()


async def _ready(client: httpx.AsyncClient, status: int) -> bool:
    return (await client.get("/readyz")).status_code == status


async def _true(value: bool) -> bool:
    return value
