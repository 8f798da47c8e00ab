"""API keys: ``lmf_<key id>_<secret>``; the key id finds the row, the secret's SHA-256 is compared.

The secrets are 32 random bytes, so a fast hash is enough (a slow password hash guards guessable
secrets; these are not guessable) and authentication costs microseconds per request.

A route declares its scope with ``Depends(require(scope))``. ``AuthenticatedRoute`` checks that
scope before FastAPI reads or validates the body, so a caller learns 401, then 403, and only then
422: nothing about a route's body is told to a caller who may not call it.
"""

from __future__ import annotations

import hashlib
import hmac
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


# Declares the scheme in OpenAPI (``securitySchemes.bearer``); ``authenticate`` does the checking.
bearer_scheme = HTTPBearer(
    scheme_name="bearer", bearerFormat="lmf_<key id>_<secret>", description="An lmforge API key.", auto_error=False
)


async def authorize(request: Request, scope: Scope) -> Principal:
    """The caller's key must be valid (else 401) and carry ``scope`` or ``admin`` (else 403)."""
    principal = await authenticate(request)
    if scope not in principal.scopes and Scope.ADMIN not in principal.scopes:
        raise HTTPException(403, {"code": "forbidden", "message": f"this API key lacks the {scope} scope"})
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
