"""API keys: ``lmf_<key id>_<secret>``; the key id finds the row, the secret's SHA-256 is compared.

The secrets are 32 random bytes, so a fast hash is enough (a slow password hash guards guessable
secrets; these are not guessable) and authentication costs microseconds per request.

A route declares its scope with ``Depends(require(scope))``. ``AuthenticatedRoute`` checks that
scope before FastAPI reads or validates the body, so a caller learns 401, then 403, and only then
422: nothing about a route's body is told to a caller who may not call it. Between the scope and
the body, the key's request rate is counted (429, ``quotas.py``).

A key that was accepted is remembered for ``api_key_cache_ttl_s`` seconds (``KeyCache``), so a
request costs no database read. The bound on a revocation or rotation is that TTL, counted from
the database read, and only on another replica: the replica that revokes or rotates a key forgets
it at once; expiry is checked on every request against the key's ``expires_at``; and a refusal is
never answered from memory: a key that the remembered row would refuse (another secret, revoked,
expired) is read again first, so a rotated key's new secret works at once on every replica.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lmforge.common.db import Database
from lmforge.common.http import CallerPrincipal
from lmforge.common.names import API_KEY_ID_PATTERN
from lmforge.common.telemetry import get_logger

from . import store

log = get_logger(__name__)

BOOTSTRAP_KEY_NAME = "bootstrap-admin"


class Scope(StrEnum):
    RECORDS_WRITE = "records:write"
    RECORDS_ERASE = "records:erase"
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
    # The key's own limits (None: the gateway's settings apply).
    requests_per_minute: int | None = None
    completion_tokens_per_day: int | None = None

    def forwarded(self) -> CallerPrincipal:
        """What services behind the gateway learn about the caller (``X-Lmforge-Principal``)."""
        return CallerPrincipal(key_id=self.key_id, name=self.name)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "lmf" or not re.fullmatch(API_KEY_ID_PATTERN, parts[1]) or not parts[2]:
        return None
    return parts[1], parts[2]


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def new_key() -> tuple[str, str, str]:
    """A fresh key: its id, its secret, and the whole key as the client sends it."""
    key_id, secret = secrets.token_hex(6), new_secret()
    return key_id, secret, format_key(key_id, secret)


def format_key(key_id: str, secret: str) -> str:
    return f"lmf_{key_id}_{secret}"


async def sync_bootstrap_key(db: Database, key: str | None) -> None:
    """Make the stored bootstrap admin key follow ``LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY`` (start-up).

    A changed secret replaces the stored hash (the old secret stops working); a removed setting
    revokes the key; a new key id revokes the old one and creates the new one.
    """
    if key is None:
        outcome = await store.sync_bootstrap_key(db, name=BOOTSTRAP_KEY_NAME, scopes=[Scope.ADMIN])
        if outcome == "revoked":
            log.warning("bootstrap admin key removed from the settings: revoked")
        log.warning("no bootstrap admin key configured (LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY)")
        return
    parsed = split_key(key)
    if parsed is None:
        raise ValueError(
            "LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY looks like lmf_<id>_<secret>, the id being 1-32 letters, digits or '-'"
        )
    key_id, secret = parsed
    outcome = await store.sync_bootstrap_key(
        db, name=BOOTSTRAP_KEY_NAME, scopes=[Scope.ADMIN], key_id=key_id, secret_sha256=digest(secret)
    )
    log.info("bootstrap admin key", key_id=key_id, outcome=outcome)


class KeyCache:
    """Rows of keys that were accepted, each for ``ttl_s`` seconds after it was read from the database.

    ``forget`` drops a key (revoke, rotate) and makes any read that began before it unable to
    store what it read, so the row a revoke replaced never comes back. ``ttl_s`` 0: nothing kept.
    """

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._rows: dict[str, tuple[float, store.ApiKeyRow]] = {}
        self._forgets = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key_id: str) -> store.ApiKeyRow | None:
        entry = self._rows.get(key_id)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._rows[key_id]
            return None
        return entry[1]

    def epoch(self) -> int:
        """Taken before a database read, handed to ``put``: a ``forget`` meanwhile voids the read."""
        return self._forgets

    def put(self, row: store.ApiKeyRow, epoch: int) -> None:
        if self.ttl_s <= 0 or epoch != self._forgets:
            return
        if row.key_id not in self._rows and len(self._rows) >= self.max_entries:
            del self._rows[next(iter(self._rows))]  # the oldest read
        self._rows[row.key_id] = (time.monotonic() + self.ttl_s, row)

    def update(self, row: store.ApiKeyRow) -> None:
        """The remembered row, changed by this process (``last_used_at``); its deadline stays."""
        entry = self._rows.get(row.key_id)
        if entry is not None:
            self._rows[row.key_id] = (entry[0], row)

    def forget(self, key_id: str) -> None:
        self._forgets += 1
        self._rows.pop(key_id, None)


def _accepts(key: store.ApiKeyRow, secret_sha256: str, now: datetime) -> bool:
    return hmac.compare_digest(key.secret_sha256, secret_sha256) and key.revoked_at is None and not key.expired(now)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, {"code": "unauthorized", "message": message}, headers={"WWW-Authenticate": "Bearer"})


async def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("missing API key: send Authorization: Bearer <key>")
    parsed = split_key(token.strip())
    if parsed is None:
        raise _unauthorized("invalid API key")
    db: Database = request.app.state.runtime.db
    cache: KeyCache = request.app.state.key_cache
    key_id, secret_sha256, now = parsed[0], digest(parsed[1]), datetime.now(UTC)
    key = cache.get(key_id)
    if key is None or not _accepts(key, secret_sha256, now):
        # Not remembered, or the remembered row would refuse: the database decides.
        epoch = cache.epoch()
        key = await store.get_key(db, key_id)
        if key is not None:
            cache.put(key, epoch)
    if key is None or not hmac.compare_digest(key.secret_sha256, secret_sha256):
        raise _unauthorized("invalid API key")
    # Only a caller holding the right secret learns that the key was revoked or has expired.
    if key.revoked_at is not None:
        raise _unauthorized("this API key was revoked")
    if key.expired(now):
        assert key.expires_at is not None
        raise _unauthorized(f"this API key expired at {key.expires_at.isoformat(timespec='seconds')}")
    if store.touch_due(key, now):
        await store.touch_key(db, key, now)
        cache.update(replace(key, last_used_at=now))
    return Principal(
        key_id=key.key_id,
        name=key.name,
        scopes=frozenset(key.scopes),
        requests_per_minute=key.requests_per_minute,
        completion_tokens_per_day=key.completion_tokens_per_day,
    )


# Declares the scheme in OpenAPI (``securitySchemes.bearer``); ``authenticate`` does the checking.
bearer_scheme = HTTPBearer(
    scheme_name="bearer", bearerFormat="lmf_<key id>_<secret>", description="An lmforge API key.", auto_error=False
)


async def authorize(request: Request, scope: Scope) -> Principal:
    """The caller's key must be valid (else 401), carry ``scope`` or ``admin`` (else 403) and be
    under its request rate (else 429)."""
    principal = await authenticate(request)
    if scope not in principal.scopes and Scope.ADMIN not in principal.scopes:
        raise HTTPException(403, {"code": "forbidden", "message": f"this API key lacks the {scope} scope"})
    await request.app.state.quotas.count_request(principal)
    return principal


def require(scope: Scope) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency: the caller's key must carry ``scope`` (or ``admin``).

    On an ``AuthenticatedRoute`` the check has already run, before the body was read; the
    dependency hands the principal to the route (and checks by itself on any other route).
    """

    async def dependency(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
    ) -> Principal:
        principal = getattr(request.state, "principal", None)
        if isinstance(principal, Principal) and getattr(request.state, "principal_scope", None) == scope:
            return principal
        return await authorize(request, scope)

    dependency.required_scope = scope  # type: ignore[attr-defined]
    return dependency


def required_scope(dependant: Dependant) -> Scope | None:
    """The scope a route declares through ``require``, looked up in its dependency tree."""
    for dep in dependant.dependencies:
        scope = getattr(dep.call, "required_scope", None)
        if scope is None:
            scope = required_scope(dep)
        if scope is not None:
            return scope  # type: ignore[no-any-return]
    return None


class AuthenticatedRoute(APIRoute):
    """A route that authorizes its caller before FastAPI reads or validates the request body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        scope = required_scope(self.dependant)
        if scope is None:
            return handler

        async def authorized_handler(request: Request) -> Response:
            request.state.principal = await authorize(request, scope)
            request.state.principal_scope = scope
            return await handler(request)

        return authorized_handler
