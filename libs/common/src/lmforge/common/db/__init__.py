"""Database helpers: async engines by URL, the inbox, the outbox and the Alembic pattern."""

from .engine import Database, create_engine
from .inbox import Inbox
from .migrations import run_alembic_env, upgrade_database, upgrade_database_sync
from .outbox import Outbox, OutboxRelay
from .statements import IN_LIST_LIMIT, as_utc, chunks, insert_ignoring_conflicts, lock_names

__all__ = [
    "IN_LIST_LIMIT",
    "Database",
    "Inbox",
    "Outbox",
    "OutboxRelay",
    "as_utc",
    "chunks",
    "create_engine",
    "insert_ignoring_conflicts",
    "lock_names",
    "run_alembic_env",
    "upgrade_database",
    "upgrade_database_sync",
]
