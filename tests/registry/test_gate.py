"""Registration, the promotion gate and rollback, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from sqlalchemy import select

from lmforge.common.db import Database
from lmforge.common.events import AliasMovedV1, Hyperparameters, ModelReadyV1
from lmforge.registry.models import aliases, audit_log, metadata, outbox
from lmforge.registry.settings import RegistrySettings
from lmforge.registry.store import current_alias, move_alias, register


def ready(run: str, ppl: float) -> ModelReadyV1:
    return ModelReadyV1(
        model_name="support",
        run_id=run,
        job_id=f"job-{run}",
        artifact_uri=f"file:///a/{run}",
        base_model="b",
        dataset="tickets",
        dataset_version=1,
        dataset_manifest_uri="file:///m.json",
        hyperparameters=Hyperparameters(),
        metrics={"val_perplexity": ppl},
    )


async def alias_events(db: Database) -> list[dict[str, object]]:
    async with db.sessions() as s:
        rows = (
            await s.execute(select(outbox.table.c.event_type, outbox.table.c.value).order_by(outbox.table.c.id))
        ).all()
    return [json.loads(r.value) for r in rows if r.event_type == AliasMovedV1.event_type]


async def test_gate_promotes_better_versions_only_and_rollback_is_one_move(database: Database) -> None:
    await database.create_all(metadata)
    settings = RegistrySettings(gate_max_val_perplexity=50.0)
    async with database.sessions.begin() as s:
        first = await register(s, ready("r1", 10.0), settings)
        assert first is not None and first["gate"]["passed"] and first["version"] == 1
        assert await register(s, ready("r1", 10.0), settings) is None  # same run: registered once
        worse = await register(s, ready("r2", 12.0), settings)
        assert worse is not None and not worse["gate"]["passed"]
        assert "worse than production v1" in worse["gate"]["reasons"][0]
        too_high = await register(s, ready("r3", 80.0), settings)
        assert too_high is not None and "above threshold" in too_high["gate"]["reasons"][0]
        better = await register(s, ready("r4", 8.0), settings)
        assert better is not None and better["gate"]["passed"] and better["version"] == 4
        assert await current_alias(s, "support", "production") == 4
        # Rollback: one alias move back to v1, announced like any other move.
        await move_alias(s, "support", "production", 1, actor="oncall", reason="rollback")
        assert await current_alias(s, "support", "production") == 1
    moves = await alias_events(database)
    assert [(m["version"], m["previous_version"]) for m in moves] == [(1, None), (4, 1), (1, 4)]
    async with database.sessions() as s:
        actions = [r.action for r in (await s.execute(select(audit_log).order_by(audit_log.c.id))).all()]
        assert actions.count("version_registered") == 4 and actions.count("alias_moved") == 3
        assert len((await s.execute(select(aliases))).all()) == 1
