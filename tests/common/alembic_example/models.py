"""A service-shaped schema for the Alembic pattern test: the shared inbox and outbox tables."""

from sqlalchemy import MetaData

from lmforge.common.db import Inbox, Outbox

metadata = MetaData()
inbox = Inbox(metadata)
outbox = Outbox(metadata, source="lmforge/example")
