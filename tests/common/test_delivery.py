"""At-least-once delivery with exactly-once side effects, across crashes and SIGTERM.

Each test runs the consumer as a separate process, against the real broker and the real
PostgreSQL, and kills it the way production would.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from lmforge.common.db import Database
from lmforge.common.kafka import EventProducer
from lmforge.common.settings import KafkaSettings
from lmforge.devstack.servers import PostgresCluster

from ..helpers import committed_total, wait_until
from .consumer_worker import inbox, metadata, side_effects, started
from .factories import raw_record

ROOT = Path(__file__).resolve().parents[2]


def spawn_worker(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.common.consumer_worker", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def count(db: Database, table: object) -> int:
    async with db.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


async def test_crash_mid_batch_redelivers_and_inbox_keeps_side_effects_exactly_once(
    kafka_settings: KafkaSettings, postgres: PostgresCluster, unique: str
) -> None:
    topic, group = f"crash-{unique}", f"g-{unique}"
    url = postgres.create_database(f"crash_{unique}")
    n = 30
    async with EventProducer(kafka_settings, source="tests") as producer:
        await producer.publish_many(topic, [(f"k{i % 3}", raw_record(f"r{i}")) for i in range(n)])

    crashed = spawn_worker(kafka_settings.bootstrap_servers, topic, group, url, "--crash-after", "12")
    assert await wait_exit(crashed) == 17, crashed.stdout.read().decode() if crashed.stdout else ""
    db = Database(url)
    try:
        assert await count(db, side_effects) == 12
        # The crash came before the offset commit: the whole batch is still uncommitted.
        assert await committed_total(kafka_settings.bootstrap_servers, group, topic) == 0

        restarted = spawn_worker(kafka_settings.bootstrap_servers, topic, group, url)

        async def all_committed() -> bool:
            return await committed_total(kafka_settings.bootstrap_servers, group, topic) == n

        await wait_until(all_committed, timeout=60, interval=0.3)
        restarted.send_signal(signal.SIGTERM)
        assert await wait_exit(restarted) == 0
        # Redelivered: the 12 records handled before the crash were handed to the handler again...
        assert await count(db, started) >= n + 12
        # ...but every side effect happened exactly once.
        assert await count(db, side_effects) == n
        async with db.sessions() as session:
            distinct = (await session.execute(select(func.count(func.distinct(side_effects.c.event_id))))).scalar_one()
        assert distinct == n
        assert await count(db, inbox.table) == n
    finally:
        await db.dispose()


async def test_sigterm_drains_in_flight_work_and_commits_nothing_unprocessed(
    kafka_settings: KafkaSettings, postgres: PostgresCluster, unique: str
) -> None:
    topic, group = f"drain-{unique}", f"g-{unique}"
    url = postgres.create_database(f"drain_{unique}")
    n = 40
    async with EventProducer(kafka_settings, source="tests") as producer:
        await producer.publish_many(topic, [("one-key", raw_record(f"r{i}")) for i in range(n)])

    db = Database(url)
    await db.create_all(metadata)
    worker = spawn_worker(kafka_settings.bootstrap_servers, topic, group, url, "--delay", "0.25")
    try:

        async def some_started() -> bool:
            return await count(db, started) >= 3

        await wait_until(some_started, timeout=60)
        worker.send_signal(signal.SIGTERM)
        assert await wait_exit(worker) == 0
        handled = await count(db, side_effects)
        began = await count(db, started)
        committed = await committed_total(kafka_settings.bootstrap_servers, group, topic)
        # It stopped early instead of working through the backlog...
        assert 3 <= handled < n
        # ...the record in flight when SIGTERM arrived was finished, not abandoned...
        assert began == handled
        # ...and the committed offset covers exactly the handled records.
        assert committed == handled
        async with db.sessions() as session:
            max_offset = (await session.execute(select(func.max(side_effects.c.offset)))).scalar_one()
        assert committed == max_offset + 1
    finally:
        await db.dispose()
