from lmforge.common.db.migrations import run_alembic_env
from lmforge.registry.models import metadata

run_alembic_env(metadata)
