"""The gateway's persistence: API keys. Routes and authentication call these; none writes SQL itself.

No secret comes here, only its SHA-256 (``auth.py`` makes keys and hashes them). Nothing is
cached here; ``auth.KeyCache`` remembers accepted keys for a few seconds, and the routes that
revoke or rotate a key make it forget them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, or_, select, update

from lmforge.common.db import Database, as_utc, insert_ignoring_conflicts

from .models import api_keys

# last_used_at is written at most this often per key: a request costs a read, not a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class KeyNotFound(LookupError):
    pass


class KeyManagedBySettings(Exception):
    """The bootstrap key follows LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY; the API does not revoke or rotate it."""


class KeyRevoked(Exception):
    pass


@dataclass(frozen=True)
class ApiKeyRow:
    key_id: str
    name: str
    secret_sha256: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None
    last_used_at: datetime | None
    bootstrap: bool
    requests_per_minute: int | None
    completion_tokens_per_day: int | None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def _key(row: Any) -> ApiKeyRow:
    created_at = as_utc(row.created_at)
    assert created_at is not None
    return ApiKeyRow(
        key_id=row.key_id,
        name=row.name,
        secret_sha256=row.secret_sha256,
        scopes=tuple(row.scopes),
        created_at=created_at,
        expires_at=as_utc(row.expires_at),
        revoked_at=as_utc(row.revoked_at),
        rotated_at=as_utc(row.rotated_at),
        last_used_at=as_utc(row.last_used_at),
        bootstrap=bool(row.bootstrap),
        requests_per_minute=row.requests_per_minute,
        completion_tokens_per_day=row.completion_tokens_per_day,
    )


async def insert_key(
    db: Database,
    *,
    key_id: str,
    name: str,
    secret_sha256: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    requests_per_minute: int | None = None,
    completion_tokens_per_day: int | None = None,
) -> ApiKeyRow:
    values = {
        "key_id": key_id,
        "name": name,
        "secret_sha256": secret_sha256,
        "scopes": sorted(set(scopes)),
        "created_at": datetime.now(UTC),
        "expires_at": expires_at,
        "bootstrap": False,
        "requests_per_minute": requests_per_minute,
        "completion_tokens_per_day": completion_tokens_per_day,
    }
    async with db.sessions.begin() as session:
        await session.execute(api_keys.insert().values(**values))
    row = await get_key(db, key_id)
    assert row is not None
    return row


async def get_key(db: Database, key_id: str) -> ApiKeyRow | None:
    async with db.sessions() as session:
        row = (await session.execute(select(api_keys).where(api_keys.c.key_id == key_id))).first()
    return None if row is None else _key(row)


async def list_keys(db: Database) -> list[ApiKeyRow]:
    """Every key, revoked and expired ones included, oldest first."""
    async with db.sessions() as session:
        rows = (await session.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id))).all()
    return [_key(row) for row in rows]


async def _changeable(session: Any, key_id: str) -> ApiKeyRow:
    row = (await session.execute(select(api_keys).where(api_keys.c.key_id == key_id))).first()
    if row is None:
        raise KeyNotFound(f"no API key {key_id}")
    key = _key(row)
    if key.bootstrap:
        raise KeyManagedBySettings(
            f"API key {key_id} is the bootstrap admin key: change or remove LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY"
        )
    return key


async def revoke_key(db: Database, key_id: str) -> ApiKeyRow:
    """Revoke a key for good (a second revoke changes nothing); it stays listed."""
    async with db.sessions.begin() as session:
        key = await _changeable(session, key_id)
        if key.revoked_at is None:
            await session.execute(
                update(api_keys).where(api_keys.c.key_id == key_id).values(revoked_at=datetime.now(UTC))
            )
    row = await get_key(db, key_id)
    assert row is not None
    return row


async def replace_secret(db: Database, key_id: str, secret_sha256: str) -> ApiKeyRow:
    """Rotate: the key keeps its id, name, scopes, expiry and limits; only the new secret works."""
    async with db.sessions.begin() as session:
        key = await _changeable(session, key_id)
        if key.revoked_at is not None:
            raise KeyRevoked(f"API key {key_id} is revoked; create a new one")
        await session.execute(
            update(api_keys)
            .where(api_keys.c.key_id == key_id)
            .values(secret_sha256=secret_sha256, rotated_at=datetime.now(UTC))
        )
    row = await get_key(db, key_id)
    assert row is not None
    return row


def touch_due(key: ApiKeyRow, now: datetime) -> bool:
    """``last_used_at`` is older than ``LAST_USED_RESOLUTION`` (or unset): ``touch_key`` would write."""
    return key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION


async def touch_key(db: Database, key: ApiKeyRow, now: datetime) -> None:
    """Note that ``key`` was used, unless that was noted less than a minute ago."""
    if not touch_due(key, now):
        return
    async with db.sessions.begin() as session:
        await session.execute(
            update(api_keys)
            .where(
                api_keys.c.key_id == key.key_id,
                or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < now - LAST_USED_RESOLUTION),
            )
            .values(last_used_at=now)
        )


async def sync_bootstrap_key(
    db: Database, *, name: str, scopes: list[str], key_id: str | None = None, secret_sha256: str | None = None
) -> str:
    """Make the stored bootstrap key what the setting says, and say what changed.

    Set: the key exists, active, with this secret's hash ("created", "rotated", "restored" after
    it had been revoked, or "unchanged").
    Changed to another key id, or unset: the former bootstrap key is revoked ("revoked" when that
    was all). Safe when several replicas start at once.
    """
    now = datetime.now(UTC)
    outcome = "unchanged"
    async with db.sessions.begin() as session:
        others = update(api_keys).where(api_keys.c.bootstrap.is_(True), api_keys.c.revoked_at.is_(None))
        if key_id is not None:
            others = others.where(api_keys.c.key_id != key_id)
        revoked = await session.execute(others.values(revoked_at=now))
        assert isinstance(revoked, CursorResult)
        if revoked.rowcount and key_id is None:
            outcome = "revoked"
        if key_id is None or secret_sha256 is None:
            return outcome
        values = {"key_id": key_id, "name": name, "secret_sha256": secret_sha256, "scopes": sorted(scopes)}
        inserted = await session.execute(
            insert_ignoring_conflicts(db.dialect, api_keys, values | {"created_at": now, "bootstrap": True})
        )
        assert isinstance(inserted, CursorResult)
        if inserted.rowcount:
            return "created"
        row = (await session.execute(select(api_keys).where(api_keys.c.key_id == key_id))).first()
        assert row is not None
        key = _key(row)
        if not key.bootstrap:
            raise ValueError(
                f"the bootstrap admin key's id {key_id} belongs to a key created through the API: "
                "give LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY another id (lmf_<id>_<secret>)"
            )
        changes: dict[str, Any] = {}
        if key.secret_sha256 != secret_sha256:
            changes |= {"secret_sha256": secret_sha256, "rotated_at": now}
            outcome = "rotated"
        if key.revoked_at is not None or key.expires_at is not None or list(key.scopes) != sorted(scopes):
            changes |= {"revoked_at": None, "expires_at": None, "scopes": sorted(scopes), "name": name}
            outcome = "rotated" if outcome == "rotated" else "restored"
        if changes:
            await session.execute(update(api_keys).where(api_keys.c.key_id == key_id).values(**changes))
    return outcome
