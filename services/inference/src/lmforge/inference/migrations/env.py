from lmforge.common.db.migrations import run_alembic_env
from lmforge.inference.models import metadata

run_alembic_env(metadata)
