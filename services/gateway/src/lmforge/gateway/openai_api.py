"""The OpenAI-compatible routes: ``/v1/models``.

What an OpenAI client reads, on top of the inference service's internal API (``docs/serving.md``):
every id inference serves right now, in OpenAI's list and model shapes. A request is checked like
every ``/v1`` route (key 401, scope 403, rate 429), then its parameters; one that fails validation
is a ``400`` (OpenAI's BadRequest) naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.common.http import (
    error_responses,
    undecodable_body_response,
    validation_error_response,
)
from lmforge.common.names import ModelReference, url_path

from .auth import AuthenticatedRoute, Principal, Scope, require
from .downstream import Downstream, PassThrough
from .schemas import (
    ModelList,
    ModelObject,
)


class OpenAIRoute(AuthenticatedRoute):
    """An ``AuthenticatedRoute`` with OpenAI's statuses: a request that fails validation is ``400``
    (not ``422``), and so is a service's ``422``; a service's 4xx names the field it is about."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        params = {"model_not_found": "model"}

        async def openai_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return validation_error_response(exc, 400)
            except StarletteHTTPException as exc:
                if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
                    return undecodable_body_response(exc.__cause__, 400)
                raise
            except PassThrough as exc:
                return exc.response(400 if exc.resp.status_code == 422 else None, params=params)

        return openai_handler


# Every route: the key (401), its scope (403), a malformed request (400), too many requests (429),
# 503 while rate limits cannot be counted; each calls inference (502, 503, 504).
router = APIRouter(prefix="/v1", route_class=OpenAIRoute, responses=error_responses(400, 401, 403, 429, 503))
DOWNSTREAM = error_responses(502, 503, 504)


def _downstream(request: Request) -> Downstream:
    return request.app.state.downstream  # type: ignore[no-any-return]


# --- /v1/models: what answers right now -------------------------------------------------------


def _model_object(entry: dict[str, Any]) -> ModelObject:
    created = entry.get("created")
    return ModelObject(
        id=str(entry["id"]),
        object="model",
        created=int(created) if isinstance(created, int | float) else 0,
        owned_by="lmforge",
    )


async def _served(request: Request, who: Principal) -> list[ModelObject]:
    served = await _downstream(request).json("inference", "GET", url_path("served-models"), principal=who.forwarded())
    return [_model_object(e) for e in served if isinstance(e, dict) and isinstance(e.get("id"), str)]


@router.get("/models", response_model=ModelList, responses=DOWNSTREAM)
async def list_models(request: Request, who: Annotated[Principal, Depends(require(Scope.COMPLETIONS))]) -> ModelList:
    """Every id a completion may name right now: each served model's name (its production alias),
    ``name@alias`` for each alias and ``name@v<n>`` for each version being served."""
    return ModelList(object="list", data=await _served(request, who))


@router.get("/models/{model}", response_model=ModelObject, responses=error_responses(404) | DOWNSTREAM)
async def retrieve_model(
    request: Request, model: ModelReference, who: Annotated[Principal, Depends(require(Scope.COMPLETIONS))]
) -> ModelObject:
    """One id of ``GET /v1/models``; ``404`` (``model_not_found``) for an id not served."""
    for entry in await _served(request, who):
        if entry.id == model:
            return entry
    raise HTTPException(
        404,
        {
            "code": "model_not_found",
            "message": f"The model '{model}' does not exist or is not served",
            "param": "model",
        },
    )
