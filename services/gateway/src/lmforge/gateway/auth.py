"""API keys: ``lmf_<key id>_<secret>``; the key id finds the row, the secret's SHA-256 is compared.

The secrets are 32 random bytes, so a fast hash is enough (a slow password hash guards guessable
secrets; these are not guessable) and authentication costs microseconds per request.

A route declares its scope with ``Depends(require(scope))``. ``AuthenticatedRoute`` checks that
scope before FastAPI reads or validates the body, so a caller learns 401, then 403, and only then
422: nothing about a route's body is told to a caller who may not call it. Between the scope and
the body, the key's request rate is counted (429, ``quotas.py``).

Every request reads its key's row (``store.py``): there is no cache, so a revoked, rotated or
expired key is refused from the very next request on, by every replica.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
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


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, {"code": "unauthorized", "message": message}, headers={"WWW-Authenticate": "Bearer"})


async def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("missing API key: send Authorization: Bearer <key>")
    parsed = split_key(token.strip())
    db: Database = request.app.state.runtime.db
    key = await store.get_key(db, parsed[0]) if parsed is not None else None
    if parsed is None or key is None or not hmac.compare_digest(key.secret_sha256, digest(parsed[1])):
        raise _unauthorized("invalid API key")
    # Only a caller holding the right secret learns that the key was revoked or has expired.
    if key.revoked_at is not None:
        raise _unauthorized("this API key was revoked")
    now = datetime.now(UTC)
    if key.expired(now):
        assert key.expires_at is not None
        raise _unauthorized(f"this API key expired at {key.expires_at.isoformat(timespec='seconds')}")
    await store.touch_key(db, key, now)
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
