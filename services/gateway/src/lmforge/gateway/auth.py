"""API keys: ``lmf_<key id>_<secret>``; the key id finds the row, the secret's SHA-256 is compared.

The secrets are 32 random bytes, so a fast hash is enough (a slow password hash guards guessable
secrets; these are not guessable) and authentication costs microseconds per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from fastapi import HTTPException, Request
from sqlalchemy import select

from lmforge.common.db import Database

from .models import api_keys


class Scope(StrEnum):
    RECORDS_WRITE = "records:write"
    DATASETS_WRITE = "datasets:write"
    DATASETS_READ = "datasets:read"
    TRAINING_WRITE = "training:write"
    TRAINING_READ = "training:read"
    MODELS_READ = "models:read"
    MODELS_WRITE = "models:write"
    COMPLETIONS = "completions"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    scopes: frozenset[str]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "lmf" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def create_key(db: Database, name: str, scopes: list[str], key: str | None = None) -> str:
    """Store a key (generated unless given) and return it; only its hash is kept."""
    if key is None:
        key = f"lmf_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    parsed = split_key(key)
    if parsed is None:
        raise ValueError("an API key looks like lmf_<id>_<secret>")
    key_id, secret = parsed
    async with db.sessions.begin() as session:
        existing = (await session.execute(select(api_keys.c.key_id).where(api_keys.c.key_id == key_id))).first()
        if existing is None:
            await session.execute(
                api_keys.insert().values(
                    key_id=key_id,
                    name=name,
                    secret_sha256=_digest(secret),
                    scopes=sorted(set(scopes)),
                    created_at=datetime.now(UTC),
                )
            )
    return key


async def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            401,
            {"code": "unauthorized", "message": "missing API key: send Authorization: Bearer <key>"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    parsed = split_key(token.strip())
    db: Database = request.app.state.runtime.db
    row = None
    if parsed is not None:
        async with db.sessions() as session:
            row = (await session.execute(select(api_keys).where(api_keys.c.key_id == parsed[0]))).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.secret_sha256, _digest(parsed[1])):  # type: ignore[index]
        raise HTTPException(
            401,
            {"code": "unauthorized", "message": "invalid or revoked API key"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Principal(key_id=row.key_id, name=row.name, scopes=frozenset(row.scopes))


def require(scope: Scope):  # type: ignore[no-untyped-def]
    """A dependency: the caller's key must carry ``scope`` (or ``admin``)."""

    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request)
        if scope not in principal.scopes and Scope.ADMIN not in principal.scopes:
            raise HTTPException(403, {"code": "forbidden", "message": f"this API key lacks the {scope} scope"})
        return principal

    return dependency
