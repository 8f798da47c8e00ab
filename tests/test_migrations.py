"""Every service's Alembic migrations produce exactly its models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from lmforge.common.db import Database, upgrade_database
from lmforge.devstack.migrations import migrations_dir

SERVICES = ["ingest", "preprocess", "trainer", "registry", "inference", "gateway"]


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_match_models(service: str, database_url: str) -> None:
    metadata = importlib.import_module(f"lmforge.{service}.models").metadata
    await upgrade_database(database_url, migrations_dir(service))
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
    finally:
        await db.dispose()
    assert diff == [], (
        f"{service}: models and migrations differ; run python -m lmforge.devstack.migrations {service} '<message>'"
    )
