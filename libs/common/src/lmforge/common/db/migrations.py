"""The Alembic pattern every service follows.

Each service keeps ``migrations/`` next to its ``models.py``: an ``env.py`` of two lines and a
``versions/`` folder. ``upgrade_database`` runs ``alembic upgrade head`` at start-up, for SQLite
and PostgreSQL alike; ``alembic revision --autogenerate`` works through the same ``env.py``.

    # services/<name>/src/lmforge/<name>/migrations/env.py
    from lmforge.common.db.migrations import run_alembic_env
    from lmforge.<name>.models import metadata
    run_alembic_env(metadata)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.schema import MetaData


def run_alembic_env(target_metadata: MetaData) -> None:
    """Body of a service's ``env.py``: online migrations over the async engine, or offline SQL."""
    from alembic import context

    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    render_as_batch = url.startswith("sqlite")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=render_as_batch)
        with context.begin_transaction():
            context.run_migrations()
        return

    def do_run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=render_as_batch,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run_async() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool, hide_parameters=True)  # no row data in errors
        async with engine.connect() as connection:
            await connection.run_sync(do_run)
        await engine.dispose()

    asyncio.run(run_async())


def _config(url: str, script_location: Path) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_database_sync(url: str, script_location: Path, revision: str = "head") -> None:
    from alembic import command

    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        db = make_url(url).database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(_config(url, script_location), revision)  # type: ignore[arg-type]


async def upgrade_database(url: str, script_location: Path, revision: str = "head") -> None:
    """``alembic upgrade head`` from async code (env.py runs its own loop, so use a thread)."""
    await asyncio.to_thread(upgrade_database_sync, url, script_location, revision)
