"""Near-duplicates: precision and recall on generated pairs, and what the operator costs per record.

    .venv/bin/python bench/near_dup.py [--pairs 200] [--records 2000] [--database-url URL]

1. Precision and recall at the default threshold and at 0.8, on ``pairs`` near-duplicate and
   ``pairs`` distinct pairs (tests/preprocess/near_dup_pairs.py, Chinese and English).
2. Records/s through the preprocess handler (clean, mask, exact dedup, inbox, outbox, one
   transaction per record) with the near-duplicate index on and off, in the same run, on fresh
   SQLite databases (or empty PostgreSQL databases given by URL, one per run, suffixes ``_on``/``_off``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sqlalchemy import func, select

from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import Event
from lmforge.common.kafka import EventProducer, InboundMessage
from lmforge.common.settings import KafkaSettings
from lmforge.preprocess.handlers import RawRecordHandler
from lmforge.preprocess.models import cleaned_records, metadata, outbox
from lmforge.preprocess.near_dup import NearDuplicateIndex
from lmforge.preprocess.settings import NearDupSettings
from tests.common.factories import raw_record
from tests.preprocess.near_dup_pairs import evaluate, make_pairs


async def _throughput(url: str, texts: list[str], index: NearDuplicateIndex | None) -> tuple[float, int]:
    db = Database(url)
    await db.create_all(metadata)
    relay = OutboxRelay(outbox, db.sessions, EventProducer(KafkaSettings(), source="bench"))  # only woken
    handle = RawRecordHandler(db, "bench", relay, near_dups=index)
    messages = []
    for i, text in enumerate(texts):
        value, headers = Event(data=raw_record(f"B-{i}", text), source="bench").to_kafka()
        messages.append(InboundMessage("raw-data", 0, i, f"B-{i}".encode(), value, tuple(headers), 0))
    start = time.perf_counter()
    for msg in messages:
        await handle(msg)
    elapsed = time.perf_counter() - start
    async with db.sessions() as s:
        kept = (await s.execute(select(func.count()).select_from(cleaned_records))).scalar_one()
    await db.dispose()
    return len(texts) / elapsed, kept


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--database-url", help="PostgreSQL URL prefix; _on and _off databases must exist")
    args = parser.parse_args()

    pairs = make_pairs(args.pairs)
    for threshold in (NearDupSettings().threshold, 0.8):
        s = evaluate(pairs, threshold)
        print(
            f"threshold {threshold}: precision {s.precision:.3f} recall {s.recall:.3f} "
            f"(tp {s.true_positives}, fp {s.false_positives}, fn {s.false_negatives}); "
            f"pairs at or over the threshold found by LSH: {s.found_above_threshold}/{s.above_threshold}"
        )

    stream_pairs = make_pairs(args.records // 4, seed=3)  # half copies, half distinct tickets
    texts = [p.a for p in stream_pairs] + [p.b for p in stream_pairs]
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, index in (("off", None), ("on", NearDuplicateIndex())):
            url = f"{args.database_url}_{name}" if args.database_url else f"sqlite+aiosqlite:///{tmp}/{name}.db"
            results[name] = await _throughput(url, texts, index)
    (off, kept_off), (on, kept_on) = results["off"], results["on"]
    print(
        f"handler: {on:,.0f} records/s with near-dup on vs {off:,.0f} off, ratio {on / off:.2f} "
        f"({len(texts)} records; kept {kept_on} on, {kept_off} off)"
    )


if __name__ == "__main__":
    asyncio.run(main())
