"""The public API, ``/v1``: every route names the scope it needs, its answer and its errors.

(The OpenAI-compatible routes, completions and ``/v1/models``, are in ``openai_api``.)

Order of checks on every route: the API key (401), its scope (403), the key's request rate (429),
then the request (422), then the work. Internal URLs are built with ``url_path`` from quoted
segments, calls to services name the caller's key (``principal=``), and what comes back from a
service is validated into a public model (``schemas``), which leaves internal fields out.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from lmforge.common.events import ErasureRequest, Topic, TrainingRequestedV1
from lmforge.common.http import error_responses, only_query, payload_too_large, public_text, upstream_records_body
from lmforge.common.kafka import EventProducer
from lmforge.common.label_studio import ExportTask, label_studio_body
from lmforge.common.names import (
    NO_NUL_PATTERN,
    AliasName,
    DatasetName,
    JobId,
    ModelName,
    SourceName,
    VersionNumber,
    url_path,
)

from . import store
from .auth import AuthenticatedRoute, Principal, Scope, digest, format_key, new_key, new_secret, require
from .downstream import Downstream, PassThrough
from .quotas import Quotas
from .schemas import (
    DROP_REASON_PATTERN,
    ERASURE_ID_PATTERN,
    MAX_DROPPED_OFFSET,
    MAX_DROPPED_PAGE,
    MAX_RECORD_ID_CHARS,
    AliasMoved,
    AliasRequest,
    ApiKey,
    ApiKeyCreated,
    ApiKeyId,
    ApiKeyRequest,
    DatasetManifest,
    DatasetVersion,
    DatasetVersionRequest,
    DroppedRecord,
    Erasure,
    IngestResponse,
    Lineage,
    MetricHistory,
    Model,
    PipelineStats,
    TrainingJob,
    TrainingJobAccepted,
    TrainingJobCancelled,
    TrainingJobRequest,
)

# Every /v1 route: the key (401), its scope (403), a malformed request (422), too many requests
# (429), and 503 while the rate limits cannot be counted (their storage is unreachable).
router = APIRouter(prefix="/v1", route_class=AuthenticatedRoute, responses=error_responses(401, 403, 422, 429, 503))
# Routes that call a service behind the gateway may also answer these.
DOWNSTREAM = error_responses(502, 503, 504)


def _downstream(request: Request) -> Downstream:
    return request.app.state.downstream  # type: ignore[no-any-return]


def _quotas(request: Request) -> Quotas:
    return request.app.state.quotas  # type: ignore[no-any-return]


@router.post(
    "/records",
    status_code=202,
    response_model=IngestResponse,
    responses=error_responses(400, 413, 415) | DOWNSTREAM,
    openapi_extra=upstream_records_body(),
)
async def post_records(request: Request, who: Annotated[Principal, Depends(require(Scope.RECORDS_WRITE))]) -> Any:
    """One record, a JSON array, JSONL, or a multipart JSONL upload; validated and stored by ingest.

    ``202`` once the broker acknowledged every record. The body is passed to ingest as it came.
    """
    body, headers = await _body(request)
    return await _downstream(request).json(
        "ingest", "POST", url_path("records"), principal=who.forwarded(), content=body, headers=headers
    )


async def _body(request: Request) -> tuple[bytes, dict[str, str]]:
    """The request's body (``413`` over the limit) and its content type, to pass on as they came."""
    limit = request.app.state.settings.max_request_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise payload_too_large(f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise payload_too_large(f"request body over {limit} bytes")
    return bytes(body), {"content-type": request.headers.get("content-type", "application/json")}


@router.post("/erasures", status_code=202, response_model=Erasure, responses=DOWNSTREAM)
async def post_erasure(
    request: Request, body: ErasureRequest, who: Annotated[Principal, Depends(require(Scope.RECORDS_ERASE))]
) -> Any:
    """Erase a source record, by ``source`` and ``source_id``: ingest deletes its raw rows at once
    and keeps an audit entry naming the caller's key; the erasure then flows as an event through
    preprocess, which removes the cleaned text, the dedup entries and the record's rows in every
    dataset version. ``202`` once the event is on the broker: follow it at ``GET /v1/erasures/{id}``.
    A record never seen is erased all the same (nothing to delete, an audit entry all the same)."""
    entry = await _downstream(request).json(
        "ingest", "POST", url_path("erasures"), principal=who.forwarded(), json=body.model_dump()
    )
    return entry | {"status": "requested"}


@router.get("/erasures/{erasure_id}", response_model=Erasure, responses=error_responses(404) | DOWNSTREAM)
async def get_erasure(
    request: Request,
    erasure_id: Annotated[str, Path(pattern=ERASURE_ID_PATTERN)],
    who: Annotated[Principal, Depends(require(Scope.RECORDS_ERASE))],
) -> Any:
    """An erasure's audit trail: requested at ingest, then applied at preprocess (what it removed)."""
    downstream = _downstream(request)
    entry = await downstream.json("ingest", "GET", url_path("erasures", erasure_id), principal=who.forwarded())
    try:
        applied = await downstream.json(
            "preprocess", "GET", url_path("erasures", erasure_id), principal=who.forwarded()
        )
    except PassThrough as exc:
        if exc.resp.status_code != 404:
            raise
        return entry | {"status": "requested"}
    return entry | {
        "status": "applied",
        **{
            k: applied[k]
            for k in ("applied_at", "cleaned_records_erased", "dropped_records_erased", "dataset_versions")
        },
    }


@router.post(
    "/datasets/{name}/versions",
    status_code=201,
    response_model=DatasetVersion,
    responses=error_responses(404, 409) | DOWNSTREAM,
)
async def create_dataset_version(
    request: Request,
    name: DatasetName,
    who: Annotated[Principal, Depends(require(Scope.DATASETS_WRITE))],
    body: Annotated[DatasetVersionRequest | None, Body()] = None,
) -> Any:
    """Cut an immutable dataset version from the cleaned records (``409`` if there are none)."""
    return await _downstream(request).json(
        "preprocess",
        "POST",
        url_path("datasets", name, "versions"),
        principal=who.forwarded(),
        json=(body or DatasetVersionRequest()).model_dump(),
    )


@router.get(
    "/datasets/{name}/versions/{version}",
    response_model=DatasetManifest,
    responses=error_responses(404) | DOWNSTREAM,
)
async def get_dataset_version(
    request: Request,
    name: DatasetName,
    version: VersionNumber,
    who: Annotated[Principal, Depends(require(Scope.DATASETS_READ))],
) -> Any:
    """The manifest: record ids and content hashes, split counts, config hash, source offsets."""
    return await _downstream(request).json(
        "preprocess", "GET", url_path("datasets", name, "versions", version), principal=who.forwarded()
    )


@router.get("/pipeline/stats", response_model=PipelineStats, responses=DOWNSTREAM)
async def pipeline_stats(request: Request, who: Annotated[Principal, Depends(require(Scope.DATASETS_READ))]) -> Any:
    """How many records preprocess has cleaned, and dropped (duplicates, empty after cleaning)."""
    return await _downstream(request).json("preprocess", "GET", url_path("stats"), principal=who.forwarded())


@router.get(
    "/pipeline/dropped",
    response_model=list[DroppedRecord],
    responses=DOWNSTREAM,
    dependencies=[Depends(only_query("reason", "record_id", "limit", "offset"))],
)
async def pipeline_dropped(
    request: Request,
    who: Annotated[Principal, Depends(require(Scope.DATASETS_READ))],
    reason: Annotated[
        str | None,
        Query(
            pattern=DROP_REASON_PATTERN,
            description="Only drops for this reason: duplicate, near_duplicate, empty, or a recipe filter's name.",
        ),
    ] = None,
    record_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_RECORD_ID_CHARS,
            pattern=NO_NUL_PATTERN,
            description="Only drops of this record, `<source>:<source id>`.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_DROPPED_PAGE, description="At most this many.")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DROPPED_OFFSET, description="Skip this many first.")] = 0,
) -> Any:
    """Records the curation pipeline dropped, oldest first, each with its reason, the operator, the
    value it measured and the threshold (docs/curation.md). A reason nothing was dropped for lists nothing."""
    params: dict[str, str | int] = {"limit": limit, "offset": offset}
    if reason is not None:
        params["reason"] = reason
    if record_id is not None:
        params["record_id"] = record_id
    return await _downstream(request).json(
        "preprocess", "GET", url_path("dropped"), principal=who.forwarded(), params=params
    )


# --- Label Studio (docs/curation.md, "Labels and Label Studio") --------------------------------


@router.post(
    "/records/label-studio",
    status_code=202,
    response_model=IngestResponse,
    responses=error_responses(400, 413, 415) | DOWNSTREAM,
    openapi_extra=label_studio_body(),
    dependencies=[Depends(only_query("source"))],
)
async def post_label_studio(
    request: Request,
    who: Annotated[Principal, Depends(require(Scope.RECORDS_WRITE))],
    source: Annotated[SourceName, Query(description="The source of every task without `data.record_id`.")],
) -> Any:
    """A Label Studio JSON export (a list of tasks), each task one record, stored by ingest.

    The request body's schema is exactly what is accepted: the task ``id`` is the source id,
    ``data.text`` the text, the one choice of the latest annotation not cancelled the label, and
    only the keys of its other results that carry no text are kept, in the record's
    ``metadata.label_studio``. A task from lmforge's export (``data.record_id``) is an edit of that
    record. A task that does not match is ``422`` naming its index and field, and nothing of the
    export is stored."""
    body, headers = await _body(request)
    return await _downstream(request).json(
        "ingest",
        "POST",
        url_path("records", "label-studio"),
        principal=who.forwarded(),
        content=body,
        headers=headers,
        params={"source": source},
    )


@router.get(
    "/datasets/{name}/versions/{version}/label-studio",
    response_model=list[ExportTask],
    responses=error_responses(404) | DOWNSTREAM,
    dependencies=[Depends(only_query("label_as", "from_name", "to_name"))],
)
async def export_label_studio(
    request: Request,
    name: DatasetName,
    version: VersionNumber,
    who: Annotated[Principal, Depends(require(Scope.DATASETS_READ))],
    label_as: Annotated[
        Literal["predictions", "annotations"], Query(description="Where a record's label goes in its task.")
    ] = "predictions",
    from_name: Annotated[
        str, Query(min_length=1, max_length=100, pattern=NO_NUL_PATTERN, description="The choices control's name.")
    ] = "label",
    to_name: Annotated[
        str, Query(min_length=1, max_length=100, pattern=NO_NUL_PATTERN, description="The text object's name.")
    ] = "text",
) -> Response:
    """The version's records as Label Studio tasks, to import for review: ``data`` holds the
    cleaned text (personal data masked), the record id and the split; a record's label is a
    ``choices`` result among the task's ``predictions`` (or ``annotations``). Streamed from
    preprocess as it reads the shards."""
    stack = AsyncExitStack()
    resp = await stack.enter_async_context(
        _downstream(request).stream(
            "preprocess",
            "GET",
            url_path("datasets", name, "versions", version, "label-studio"),
            principal=who.forwarded(),
            params={"label_as": label_as, "from_name": from_name, "to_name": to_name},
        )
    )

    async def body() -> AsyncIterator[bytes]:
        async with stack:
            async for chunk in resp.aiter_raw():
                yield chunk

    return StreamingResponse(body(), media_type="application/json")


@router.post(
    "/training-jobs",
    status_code=202,
    response_model=TrainingJobAccepted,
    responses=error_responses(404) | DOWNSTREAM,
)
async def create_training_job(
    request: Request, body: TrainingJobRequest, who: Annotated[Principal, Depends(require(Scope.TRAINING_WRITE))]
) -> TrainingJobAccepted:
    """Check the dataset version exists, then publish the request; ``202`` after the broker's ack.

    With ``search``, the trainer runs a hyperparameter search: its trials are jobs of their own
    (``parent_job_id`` names this one). A search that every trial would fail on (a name that is no
    hyperparameter, a value the recipe refuses, a range with ``low`` above ``high``...) is
    ``422 invalid_search``, once the dataset version is known to exist.
    ``base_model`` may name a registered version (``model:<name>@production``, ``@v3``): the
    trainer resolves it when the job runs, and a job naming none that exists fails.
    """
    versions = await _downstream(request).json(
        "preprocess", "GET", url_path("datasets", body.dataset, "versions"), principal=who.forwarded()
    )
    match = next((v for v in versions if v["version"] == body.dataset_version), None)
    if match is None:
        raise HTTPException(
            404,
            {
                "code": "dataset_version_not_found",
                "message": f"dataset {body.dataset} has no version {body.dataset_version}",
            },
        )
    try:
        search = body.search.spec() if body.search is not None else None
    except ValueError as exc:
        raise HTTPException(422, {"code": "invalid_search", "message": f"search.{exc}", "param": "search"}) from exc
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    producer: EventProducer = request.app.state.runtime.producer
    await producer.publish(
        Topic.TRAINING_REQUESTS,
        TrainingRequestedV1(
            job_id=job_id,
            model_name=body.model_name,
            dataset=body.dataset,
            dataset_version=body.dataset_version,
            dataset_manifest_uri=match["manifest_uri"],
            base_model=body.base_model,
            hyperparameters=body.hyperparameters,
            search=search,
            requested_by=who.name,
        ),
        key=body.model_name,
    )
    return TrainingJobAccepted(job_id=job_id, state="requested", status_url=f"/v1/training-jobs/{job_id}")


def _public_evaluation(evaluation: Any) -> dict[str, Any] | None:
    """An evaluation summary without the report's location in the artifact store."""
    if not isinstance(evaluation, dict):
        return None
    return {k: v for k, v in evaluation.items() if k != "report_uri"}


def _public_job(job: dict[str, Any]) -> dict[str, Any]:
    return job | {"error": public_text(job.get("error")), "evaluation": _public_evaluation(job.get("evaluation"))}


@router.get("/training-jobs/{job_id}", response_model=TrainingJob, responses=error_responses(404) | DOWNSTREAM)
async def get_training_job(
    request: Request, job_id: JobId, who: Annotated[Principal, Depends(require(Scope.TRAINING_READ))]
) -> Any:
    """Job state, step, metrics and evaluation (``404`` until the trainer has taken the request in).

    A search job carries its spec in ``search``; each trial is a job with ``parent_job_id``,
    ``trial`` (its number) and, in ``search``, the values it tries."""
    job = await _downstream(request).json("trainer", "GET", url_path("jobs", job_id), principal=who.forwarded())
    return _public_job(job)


@router.get(
    "/training-jobs/{job_id}/metrics", response_model=MetricHistory, responses=error_responses(404) | DOWNSTREAM
)
async def get_training_metrics(
    request: Request, job_id: JobId, who: Annotated[Principal, Depends(require(Scope.TRAINING_READ))]
) -> Any:
    """The job's metric history, in order, for curves: every progress line (training loss, learning
    rate, gradient norm, ...) and the validation loss and perplexity at each evaluation."""
    return await _downstream(request).json(
        "trainer", "GET", url_path("jobs", job_id, "metrics"), principal=who.forwarded()
    )


@router.post(
    "/training-jobs/{job_id}/cancel",
    response_model=TrainingJobCancelled,
    responses=error_responses(404) | DOWNSTREAM,
)
async def cancel_training_job(
    request: Request, job_id: JobId, who: Annotated[Principal, Depends(require(Scope.TRAINING_WRITE))]
) -> Any:
    return await _downstream(request).json(
        "trainer", "POST", url_path("jobs", job_id, "cancel"), principal=who.forwarded()
    )


def _public_version(version: dict[str, Any]) -> dict[str, Any]:
    deployment = dict(version.get("deployment") or {})
    if deployment.get("error"):
        deployment["error"] = public_text(deployment["error"])
    return version | {"deployment": deployment, "evaluation": _public_evaluation(version.get("evaluation"))}


@router.get("/registry/models", response_model=list[Model], responses=DOWNSTREAM)
async def list_registry_models(request: Request, who: Annotated[Principal, Depends(require(Scope.MODELS_READ))]) -> Any:
    """The registry's models, their versions (metrics, gate result, deployment state) and aliases.

    (``GET /v1/models`` is the OpenAI-compatible list of what answers completions right now.)"""
    models = await _downstream(request).json("registry", "GET", url_path("models"), principal=who.forwarded())
    return [m | {"versions": [_public_version(v) for v in m["versions"]]} for m in models]


@router.put(
    "/models/{name}/aliases/{alias}",
    response_model=AliasMoved,
    responses=error_responses(404) | DOWNSTREAM,
)
async def move_alias(
    request: Request,
    name: ModelName,
    alias: AliasName,
    body: AliasRequest,
    who: Annotated[Principal, Depends(require(Scope.MODELS_WRITE))],
) -> Any:
    """Promote or roll back: point an alias at a version (inference deploys it).

    The registry's audit log names the caller's API key (its name and id), as authenticated here.
    """
    return await _downstream(request).json(
        "registry", "PUT", url_path("models", name, "aliases", alias), principal=who.forwarded(), json=body.model_dump()
    )


@router.get(
    "/models/{name}/versions/{version}/lineage",
    response_model=Lineage,
    responses=error_responses(404) | DOWNSTREAM,
)
async def lineage(
    request: Request,
    name: ModelName,
    version: VersionNumber,
    who: Annotated[Principal, Depends(require(Scope.MODELS_READ))],
) -> Any:
    """The version, its run and hyperparameters, and its dataset version down to the record ids."""
    down, principal = _downstream(request), who.forwarded()
    info = await down.json(
        "registry", "GET", url_path("models", name, "versions", version, "lineage"), principal=principal
    )
    ds = info["dataset"]
    manifest = await down.json(
        "preprocess", "GET", url_path("datasets", ds["name"], "versions", ds["version"]), principal=principal
    )
    dataset = {k: ds[k] for k in ("name", "version")}
    dataset |= {k: manifest[k] for k in ("record_count", "split_counts", "config_hash", "source_offsets")}
    dataset["record_ids"] = [r["record_id"] for r in manifest["records"]]
    return _public_version(info) | {"dataset": dataset}


# --- API keys: admin only; no answer carries a stored secret or its hash -----------------------


def _key_view(request: Request, key: store.ApiKeyRow) -> ApiKey:
    rpm, tpd = _quotas(request).limits_for(key.requests_per_minute, key.completion_tokens_per_day)
    state = "revoked" if key.revoked_at else "expired" if key.expired(datetime.now(UTC)) else "active"
    return ApiKey(
        key_id=key.key_id,
        name=key.name,
        scopes=[Scope(s) for s in key.scopes],
        state=state,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        rotated_at=key.rotated_at,
        last_used_at=key.last_used_at,
        bootstrap=key.bootstrap,
        requests_per_minute=rpm,
        completion_tokens_per_day=tpd,
    )


def _key_error(exc: Exception) -> HTTPException:
    if isinstance(exc, store.KeyNotFound):
        return HTTPException(404, {"code": "api_key_not_found", "message": str(exc)})
    if isinstance(exc, store.KeyManagedBySettings):
        return HTTPException(409, {"code": "bootstrap_key", "message": str(exc)})
    return HTTPException(409, {"code": "api_key_revoked", "message": str(exc)})


@router.get("/api-keys", response_model=list[ApiKey])
async def list_api_keys(request: Request, _: Annotated[Principal, Depends(require(Scope.ADMIN))]) -> list[ApiKey]:
    """Every key, revoked and expired ones too: ids, names, scopes, dates and limits; never a secret."""
    return [_key_view(request, key) for key in await store.list_keys(request.app.state.runtime.db)]


@router.post("/api-keys", status_code=201, response_model=ApiKeyCreated)
async def create_api_key(
    request: Request, body: ApiKeyRequest, _: Annotated[Principal, Depends(require(Scope.ADMIN))]
) -> ApiKeyCreated:
    """A new key with these scopes; the key is in this answer only (only its hash is stored)."""
    key_id, secret, key = new_key()
    expires_at = None if body.expires_in_s is None else datetime.now(UTC) + timedelta(seconds=body.expires_in_s)
    row = await store.insert_key(
        request.app.state.runtime.db,
        key_id=key_id,
        name=body.name,
        secret_sha256=digest(secret),
        scopes=[s.value for s in body.scopes],
        expires_at=expires_at,
        requests_per_minute=body.requests_per_minute,
        completion_tokens_per_day=body.completion_tokens_per_day,
    )
    return ApiKeyCreated(
        key_id=row.key_id,
        name=row.name,
        scopes=body.scopes,
        expires_at=row.expires_at,
        key=key,
        note="shown once; only its hash is stored",
    )


@router.delete("/api-keys/{key_id}", response_model=ApiKey, responses=error_responses(404, 409))
async def revoke_api_key(
    request: Request, key_id: ApiKeyId, _: Annotated[Principal, Depends(require(Scope.ADMIN))]
) -> ApiKey:
    """Revoke a key: it is refused (``401``) from its very next request on, and stays listed
    (by other gateway replicas within ``api_key_cache_ttl_s``, 5 seconds by default).

    ``409`` for the bootstrap admin key: change or remove ``LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY``.
    """
    try:
        row = await store.revoke_key(request.app.state.runtime.db, key_id)
    except (store.KeyNotFound, store.KeyManagedBySettings) as exc:
        raise _key_error(exc) from exc
    request.app.state.key_cache.forget(key_id)  # this replica refuses it from the next request on
    return _key_view(request, row)


@router.post("/api-keys/{key_id}/rotate", response_model=ApiKeyCreated, responses=error_responses(404, 409))
async def rotate_api_key(
    request: Request, key_id: ApiKeyId, _: Annotated[Principal, Depends(require(Scope.ADMIN))]
) -> ApiKeyCreated:
    """A new secret for the same key (id, name, scopes, expiry, limits); the old secret stops working.

    The new key is in this answer only. ``409`` for a revoked key and for the bootstrap admin key.
    """
    secret = new_secret()
    try:
        row = await store.replace_secret(request.app.state.runtime.db, key_id, digest(secret))
    except (store.KeyNotFound, store.KeyManagedBySettings, store.KeyRevoked) as exc:
        raise _key_error(exc) from exc
    request.app.state.key_cache.forget(key_id)  # the old secret: refused here from the next request on
    return ApiKeyCreated(
        key_id=row.key_id,
        name=row.name,
        scopes=[Scope(s) for s in row.scopes],
        expires_at=row.expires_at,
        key=format_key(row.key_id, secret),
        note="shown once; only its hash is stored; the previous secret no longer works",
    )
