"""The gateway's /v1 routes, read from the app itself: a new route is covered by every test here."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.routing import APIRoute, iter_route_contexts

from lmforge.gateway.app import build_app
from lmforge.gateway.auth import Scope, required_scope
from lmforge.gateway.settings import GatewaySettings

from ..helpers import INTERNAL_AUTH


@dataclass(frozen=True)
class PublicRoute:
    method: str
    path: str  # the template, e.g. /v1/models/{name}/versions/{version}/lineage
    scope: Scope
    parses_body: bool  # the gateway validates the body itself (POST /v1/records passes it to ingest)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def public_routes() -> list[PublicRoute]:
    routes = []
    app = build_app(GatewaySettings(internal=INTERNAL_AUTH))
    for context in iter_route_contexts(app.routes):  # routers included in the app too
        route, path = context.original_route, context.path
        if isinstance(route, APIRoute) and path is not None and path.startswith("/v1/"):
            scope = required_scope(route.dependant)
            assert scope is not None, f"{path} declares no scope"
            for method in sorted(route.methods):
                routes.append(PublicRoute(method, path, scope, route.body_field is not None))
    assert routes, "no /v1 routes found"
    return routes


def all_scopes_but(scope: Scope) -> list[str]:
    """Every scope that does not grant ``scope`` (admin grants everything)."""
    return sorted(s.value for s in Scope if s not in (scope, Scope.ADMIN))
