"""Model lifecycle events -> desired state (inbox claim in the same transaction) -> reconcile."""

from __future__ import annotations

from lmforge.common.db import Database
from lmforge.common.events import AliasMovedV1, ModelVersionRegisteredV1
from lmforge.common.kafka import InboundMessage

from .models import inbox
from .reconciler import Reconciler, set_desired


class LifecycleHandler:
    def __init__(self, db: Database, group: str, reconciler: Reconciler) -> None:
        self.db = db
        self.group = group
        self.reconciler = reconciler

    async def __call__(self, msg: InboundMessage) -> None:
        event = msg.event((AliasMovedV1, ModelVersionRegisteredV1))
        if not isinstance(event.data, AliasMovedV1):
            return  # a registered version is deployed when an alias points at it
        moved: AliasMovedV1 = event.data
        # The claim and the desired state commit together: a failure leaves neither, so the
        # redelivered event is handled again and the alias move is never lost.
        async with self.db.sessions.begin() as session:
            if not await inbox.claim(session, self.group, event.id):
                return
            await set_desired(session, moved.model_name, moved.alias, moved.version, moved.artifact_uri)
        self.reconciler.routing.invalidate()
        await self.reconciler.reconcile()
