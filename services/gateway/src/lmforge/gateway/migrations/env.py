from lmforge.common.db.migrations import run_alembic_env
from lmforge.gateway.models import metadata

run_alembic_env(metadata)
