from lmforge.common.db.migrations import run_alembic_env
from tests.common.alembic_example.models import metadata

run_alembic_env(metadata)
