"""``model-ready`` -> register (+ gate); ``deployment-events`` -> record what inference deployed."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import update

from lmforge.common.db import Database, OutboxRelay
from lmforge.common.events import DeploymentResultV1, ModelReadyV1
from lmforge.common.kafka import InboundMessage
from lmforge.common.telemetry import get_logger

from .models import inbox, model_versions
from .settings import RegistrySettings
from .store import audit, register

log = get_logger(__name__)


class RegistryHandler:
    def __init__(self, db: Database, settings: RegistrySettings, relay: OutboxRelay) -> None:
        self.db = db
        self.settings = settings
        self.relay = relay

    async def __call__(self, msg: InboundMessage) -> None:
        event = msg.event((ModelReadyV1, DeploymentResultV1))
        async with self.db.sessions.begin() as session:
            if not await inbox.claim(session, self.settings.consumer_group, event.id):
                return
            if isinstance(event.data, ModelReadyV1):
                result = await register(session, event.data, self.settings)
                if result:
                    log.info("model version registered", model=event.data.model_name, **result)
            else:
                d: DeploymentResultV1 = event.data
                await session.execute(
                    update(model_versions)
                    .where(model_versions.c.model_name == d.model_name, model_versions.c.version == d.version)
                    .values(
                        deployment={
                            "state": d.state,
                            "alias": d.alias,
                            "triton_model": d.triton_model,
                            "error": d.error,
                            "at": datetime.now(UTC).isoformat(),
                        }
                    )
                )
                await audit(
                    session,
                    "inference",
                    f"deployment_{d.state}",
                    d.model_name,
                    version=d.version,
                    alias=d.alias,
                    error=d.error,
                )
        self.relay.wake()
