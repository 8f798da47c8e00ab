"""Generate a service's next Alembic revision from its models.

    .venv/bin/python -m lmforge.devstack.migrations <service> "<message>"

Upgrades a scratch SQLite database to the current head, then autogenerates the difference
between it and ``lmforge.<service>.models.metadata`` into the service's ``migrations/versions``.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from lmforge.common.db.migrations import upgrade_database_sync


def migrations_dir(service: str) -> Path:
    module = importlib.import_module(f"lmforge.{service}")
    return Path(module.__file__ or "").parent / "migrations"


def make_revision(service: str, message: str) -> None:
    location = migrations_dir(service)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/scratch.db"
        upgrade_database_sync(url, location)
        cfg = Config()
        cfg.set_main_option("script_location", str(location))
        cfg.set_main_option("sqlalchemy.url", url)
        command.revision(cfg, message=message, autogenerate=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    make_revision(sys.argv[1], sys.argv[2])
