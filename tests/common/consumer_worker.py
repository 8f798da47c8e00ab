"""A consumer process for the crash and SIGTERM tests: one real ConsumerRunner, real database.

    python -m tests.common.consumer_worker BOOTSTRAP TOPIC GROUP DB_URL [--crash-after N] [--delay S]

For every record it writes a ``started`` row (own transaction), sleeps ``delay`` seconds, then
claims the event in the inbox and writes a ``side_effects`` row in one transaction. With
``--crash-after N`` it hard-exits (``os._exit``) right after the N-th side effect committed, before
the runner could commit the Kafka offset.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from lmforge.common.db import Database, Inbox
from lmforge.common.kafka import ConsumerRunner, InboundMessage
from lmforge.common.settings import KafkaSettings

metadata = MetaData()
inbox = Inbox(metadata)
side_effects = Table(
    "side_effects",
    metadata,
    Column("event_id", String(64), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", Integer, nullable=False),
)
started = Table("started", metadata, Column("event_id", String(64), nullable=False))


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("bootstrap")
    p.add_argument("topic")
    p.add_argument("group")
    p.add_argument("db_url")
    p.add_argument("--crash-after", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args()

    db = Database(args.db_url)
    await db.create_all(metadata)
    settings = KafkaSettings(
        bootstrap_servers=args.bootstrap,
        poll_timeout_ms=100,
        max_batch_size=1000,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
    )

    async def handler(msg: InboundMessage) -> None:
        event = msg.event()
        async with db.sessions.begin() as session:
            await session.execute(started.insert().values(event_id=event.id))
        await asyncio.sleep(args.delay)
        async with db.sessions.begin() as session:
            if not await inbox.claim(session, args.group, event.id):
                return
            await session.execute(
                side_effects.insert().values(event_id=event.id, partition=msg.partition, offset=msg.offset)
            )
        if args.crash_after:
            async with db.sessions() as session:
                done = (await session.execute(select(func.count()).select_from(side_effects))).scalar_one()
            if done >= args.crash_after:
                os._exit(17)  # a hard crash: no cleanup, no offset commit

    runner = ConsumerRunner(settings, group_id=args.group, topics=[args.topic], handler=handler)
    print("worker ready", flush=True)
    await runner.serve()
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
