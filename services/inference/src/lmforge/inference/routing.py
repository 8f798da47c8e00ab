"""Routing from memory: which deployment row answers a model's alias or version.

``/generate`` resolves its alias (or version) on every request; the deployments table is small
and this service is its only writer: the reconciler, driven by its own model-events consumer,
its start-up and its periodic pass. So the table is held in memory as one snapshot, read in one
query, and every write to it calls ``invalidate`` once it has committed; the next request reads
the table again. Nothing is served stale after a promotion: the reconciler invalidates before it
unloads the version it replaced.

A read that began before an invalidation answers the request that made it (as a database read
made just before the write would have) but is not kept. ``ttl_s`` bounds how long a snapshot is
used without any invalidation, for a change made to the database by something else.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.common.db import Database

from . import store


@dataclass(frozen=True)
class Snapshot:
    """The deployment rows, by ``(model, alias)``, and the row serving each ``(model, version)``."""

    by_alias: dict[tuple[str, str], Any]
    by_version: dict[tuple[str, int], Any]
    expires: float

    @classmethod
    def of(cls, rows: Sequence[Any], expires: float) -> Snapshot:
        by_version: dict[tuple[str, int], Any] = {}
        # A version is served by any alias pointing at it (the same Triton model): the first by name.
        for row in sorted(rows, key=lambda r: (r.model_name, r.alias)):
            if row.serving_version is not None and row.triton_model is not None:
                by_version.setdefault((row.model_name, row.serving_version), row)
        return cls({(r.model_name, r.alias): r for r in rows}, by_version, expires)


class Routing:
    def __init__(self, db: Database, ttl_s: float) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.reads = 0  # snapshots read from the database (for tests and curiosity)
        self._snapshot: Snapshot | None = None
        self._generation = 0

    def invalidate(self) -> None:
        """The deployments table changed (called after the write committed)."""
        self._generation += 1
        self._snapshot = None

    async def snapshot(self, *, fresh: bool = False) -> Snapshot:
        """The current snapshot; ``fresh``: read from the database whatever is held."""
        held = self._snapshot
        if held is not None and not fresh and time.monotonic() < held.expires:
            return held
        generation = self._generation
        rows = await store.list_deployments(self.db)
        self.reads += 1
        snapshot = Snapshot.of(rows, time.monotonic() + self.ttl_s)
        if generation == self._generation and self.ttl_s > 0:
            self._snapshot = snapshot
        return snapshot

    async def deployment(self, model: str, alias: str, *, fresh: bool = False) -> Any | None:
        """The deployment row of ``model``'s ``alias`` (serving or not), or None."""
        return (await self.snapshot(fresh=fresh)).by_alias.get((model, alias))

    async def serving_version(self, model: str, version: int, *, fresh: bool = False) -> Any | None:
        """A deployment row whose alias serves ``version`` of ``model`` now, or None."""
        return (await self.snapshot(fresh=fresh)).by_version.get((model, version))
