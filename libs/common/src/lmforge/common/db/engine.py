"""SQLAlchemy 2 async engines, chosen by URL: PostgreSQL (asyncpg) or SQLite (aiosqlite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.schema import MetaData

from ..settings import DatabaseSettings


def create_engine(url: str, *, echo: bool = False, pool_size: int = 5) -> AsyncEngine:
    """An async engine. SQLite gets WAL, a busy timeout and its parent folder created.

    ``hide_parameters``: a failing statement's parameters (record text, among others) are never
    formatted into the exception's message, nor into SQLAlchemy's own log lines with ``echo``.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True, "hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
        engine = create_async_engine(url, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # Deleted rows are overwritten with zeros, not left in free pages (an erasure's text).
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        return engine
    kwargs["pool_size"] = pool_size
    return create_async_engine(url, **kwargs)


class Database:
    """An engine and its session factory: the one handle a service keeps to its database."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 5) -> None:
        self.url = url
        self.engine = create_engine(url, echo=echo, pool_size=pool_size)
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> Database:
        return cls(settings.url, echo=settings.echo, pool_size=settings.pool_size)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def create_all(self, metadata: MetaData) -> None:
        """Create tables directly (tests). Services use Alembic migrations instead."""
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def ping(self) -> bool:
        from sqlalchemy import text

        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - readiness reports, never raises
            return False
        return True

    async def dispose(self) -> None:
        await self.engine.dispose()
