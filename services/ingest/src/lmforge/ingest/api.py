"""``POST /records``: one record, a JSON array, or JSONL (body or multipart file upload).
``POST /records/label-studio``: a Label Studio JSON export, each task a record (``label_studio``).
``POST /erasures``: erase a source record; ``GET /erasures/{erasure_id}``: its audit entry.

The routes read their body themselves, ``/records`` to take all three formats; their OpenAPI
entries still declare the schema (``upstream_records_body``, ``label_studio_body``: a JSON array of
tasks, exactly what is accepted). Every failure to read the body is a 4xx that says why: not
UTF-8, not JSON, too large, an unknown content type.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field, ValidationError

from lmforge.common.events import ErasureRequest, UpstreamRecord
from lmforge.common.http import (
    CallerPrincipal,
    caller_principal,
    error_responses,
    only_query,
    payload_too_large,
    upstream_records_body,
)
from lmforge.common.label_studio import IMPORT_TASKS, label_studio_body
from lmforge.common.names import SourceName

from .label_studio import StoredRecord, tasks_to_records
from .settings import IngestSettings
from .store import Erasure, RawRecordStore

router = APIRouter()


class RecordResult(BaseModel):
    record_id: str
    status: Literal["accepted", "duplicate"]
    event_id: str


class IngestResponse(BaseModel):
    accepted: int
    duplicates: int
    records: list[RecordResult]


def _invalid(message: str, **extra: Any) -> HTTPException:
    return HTTPException(422, {"code": "invalid_record", "message": message, **extra})


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"body is not valid UTF-8 (byte {exc.start}: {exc.reason})") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    """Standard JSON only: no NaN or Infinity, which no other JSON reader (nor PostgreSQL) takes."""
    return json.loads(text, parse_constant=_reject_constant)


def _parse_json(text: str, where: str, **extra: Any) -> Any:
    try:
        return _loads(text)
    except json.JSONDecodeError as exc:
        raise _invalid(f"{where}not JSON ({exc.msg})", **extra) from exc
    except ValueError as exc:
        raise _invalid(f"{where}not JSON ({exc})", **extra) from exc
    except RecursionError as exc:
        raise _invalid(f"{where}nested too deeply", **extra) from exc


def _parse_jsonl(text: str) -> list[Any]:
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            items.append(_parse_json(line, f"line {n}: ", line=n))
    return items


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.strip().isdigit():
        raise HTTPException(400, {"code": "bad_request", "message": "Content-Length is not a number"})
    return int(declared)


async def _read_items(request: Request, settings: IngestSettings, what: str | None = None) -> list[Any]:
    """The body's items: one record or an array of them as JSON, JSONL, or a multipart JSONL upload.
    ``what`` (a Label Studio import's ``tasks``): a JSON array of those, and nothing else."""
    declared = _declared_length(request)
    if declared is not None and declared > settings.max_request_bytes:
        raise payload_too_large(f"request body over {settings.max_request_bytes} bytes")
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if what is not None and ctype != "application/json":
        raise HTTPException(415, f"unsupported content type {ctype!r}: a JSON array of {what}")
    if ctype == "multipart/form-data":
        form = await request.form()  # a malformed multipart body is a 400 from starlette
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise _invalid("multipart upload needs a 'file' part holding JSONL")
        data = await upload.read()
        if len(data) > settings.max_request_bytes:
            raise payload_too_large(f"upload over {settings.max_request_bytes} bytes")
        return _parse_jsonl(_decode(data))
    body = await request.body()
    if len(body) > settings.max_request_bytes:
        raise payload_too_large(f"request body over {settings.max_request_bytes} bytes")
    if ctype in ("application/x-ndjson", "application/jsonl", "application/x-jsonlines"):
        return _parse_jsonl(_decode(body))
    if ctype != "application/json":
        raise HTTPException(415, f"unsupported content type {ctype!r}: use JSON, JSONL or a multipart upload")
    parsed = _parse_json(_decode(body), "body is ")
    if what is not None and not isinstance(parsed, list):
        raise _invalid(f"body: not a JSON array of {what}")
    return parsed if isinstance(parsed, list) else [parsed]


@router.post(
    "/records",
    status_code=202,
    response_model=IngestResponse,
    responses=error_responses(400, 413, 415, 422, 503),
    openapi_extra=upstream_records_body(),
)
async def post_records(request: Request) -> IngestResponse:
    """Validate every record, store each once, and answer after the broker acknowledged them."""
    settings: IngestSettings = request.app.state.settings
    items = await _read_items(request, settings)
    return await _accept(request, items, "records")


async def _accept(
    request: Request, items: list[Any], what: str, fields: dict[str, str] | None = None
) -> IngestResponse:
    """Validate every item as a record (the first bad one refuses the whole batch), then store them.

    ``fields``: what a record's field is called in the items, for the error (a task's ``data.text``)."""
    settings: IngestSettings = request.app.state.settings
    store: RawRecordStore = request.app.state.store
    if not items:
        raise _invalid(f"no {what} in the request")
    if len(items) > settings.max_records_per_request:
        raise payload_too_large(f"{len(items)} {what}: at most {settings.max_records_per_request} per request")
    records = []
    for i, item in enumerate(items):
        try:
            records.append(UpstreamRecord.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "<record>"
            field = (fields or {}).get(field.split(".")[0], field)
            where = f"{what}[{i}].{field}" if len(items) > 1 or what != "records" else field
            raise _invalid(f"{where}: {err['msg']}", index=i, field=field) from exc
    results = await store.accept(records)
    accepted = sum(r.status == "accepted" for r in results)
    return IngestResponse(
        accepted=accepted,
        duplicates=len(results) - accepted,
        records=[RecordResult(record_id=r.record_id, status=r.status, event_id=r.event_id) for r in results],
    )


@router.post(
    "/records/label-studio",
    status_code=202,
    response_model=IngestResponse,
    responses=error_responses(400, 409, 413, 415, 422, 503),
    openapi_extra=label_studio_body(),
    dependencies=[Depends(only_query("source"))],
)
async def post_label_studio(
    request: Request,
    source: Annotated[SourceName, Query(description="The source of every task without `data.record_id`.")],
) -> IngestResponse:
    """A Label Studio JSON export (a list of tasks), each task one record: exactly what the request
    body's schema allows is stored (docs/curation.md, "Labels and Label Studio"). A task the schema
    refuses is a ``422`` naming its index and field, and nothing of the export is stored."""
    settings: IngestSettings = request.app.state.settings
    tasks = await _read_items(request, settings, what="tasks")
    if not tasks:
        raise _invalid("no tasks in the request")
    if len(tasks) > settings.max_records_per_request:
        raise payload_too_large(f"{len(tasks)} tasks: at most {settings.max_records_per_request} per request")
    try:
        parsed = IMPORT_TASKS.validate_python(tasks)
    except ValidationError as exc:
        err = exc.errors()[0]
        index, field = _task_field(err["loc"])
        raise _invalid(f"tasks[{index}].{field}: {err['msg']}", index=index, field=field) from exc
    store: RawRecordStore = request.app.state.store
    named_ids = {t.data.record_id for t in parsed if t.data.record_id is not None}
    # A reviewed task of a record erased since (nothing stored after its erasure) must not bring
    # its text back: the import is refused, naming the task.
    named = await store.latest(named_ids)
    erased = await store.erased(named_ids - named.keys())
    for index, task in enumerate(parsed):
        if task.data.record_id in erased:
            raise HTTPException(
                409,
                {
                    "code": "record_erased",
                    "message": f"tasks[{index}].data.record_id: {task.data.record_id} was erased "
                    f"(erasure {erased[task.data.record_id]}); take it out of the import",
                    "index": index,
                    "field": "data.record_id",
                },
            )
    stored = {k: StoredRecord(r.text, r.label, r.metadata, r.timestamp) for k, r in named.items()}
    return await _accept(request, tasks_to_records(parsed, source, stored), "tasks", _TASK_FIELDS)


# Where a record's field comes from in a task, to name it when the record is refused.
_TASK_FIELDS = {
    "source": "data.record_id",
    "source_id": "id",
    "text": "data.text",
    "label": "annotations.result.value.choices",
    "metadata": "annotations",
}
_RESULT_KINDS = ("choices", "other")  # the tags of a result's kinds (lmforge.common.label_studio.Result)


def _task_field(loc: tuple[int | str, ...]) -> tuple[int, str]:
    """A validation error's place in the tasks: the task's index, and the field as
    ``annotations[0].result[1].value.choices`` (without the kind of result pydantic names)."""
    index = int(loc[0]) if loc and isinstance(loc[0], int) else 0
    parts: list[str] = []
    for k, part in enumerate(loc[1:], start=1):
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{part}]"]
        elif not (isinstance(loc[k - 1], int) and part in _RESULT_KINDS):
            parts.append(part)
    return index, ".".join(parts) or "<task>"


class ErasureEntry(BaseModel):
    """An erasure's audit entry at ingest: who asked, when, and how many raw rows went. No text."""

    erasure_id: str
    record_id: str
    source: str
    source_id: str
    requested_at: datetime
    requested_by: str | None = Field(description="The API key (name and id) that asked; null: an operator.")
    raw_records_erased: int = Field(description="Raw rows (one per distinct text received) deleted.")
    published_at: datetime | None = Field(description="When the erasure event reached the broker.")


def _entry(erasure: Erasure) -> ErasureEntry:
    return ErasureEntry.model_validate(erasure, from_attributes=True)


@router.post("/erasures", status_code=202, response_model=ErasureEntry, responses=error_responses(400, 503))
async def post_erasure(
    request: Request,
    body: ErasureRequest,
    who: Annotated[CallerPrincipal | None, Depends(caller_principal)],
) -> ErasureEntry:
    """Erase a source record: its raw rows are deleted at once, with an audit entry, and
    ``lmforge.record.erased.v1`` goes downstream. ``202`` once the broker acknowledged it;
    ``503`` if it did not (the rows are gone already, and the event is published later)."""
    store: RawRecordStore = request.app.state.store
    requested_by = f"{who.name} ({who.key_id})" if who is not None else None
    return _entry(await store.erase(body.source, body.source_id, requested_by))


@router.get("/erasures/{erasure_id}", response_model=ErasureEntry, responses=error_responses(404))
async def get_erasure(request: Request, erasure_id: Annotated[str, Path(max_length=64)]) -> ErasureEntry:
    store: RawRecordStore = request.app.state.store
    erasure = await store.erasure(erasure_id)
    if erasure is None:
        raise HTTPException(404, {"code": "erasure_not_found", "message": f"no erasure {erasure_id}"})
    return _entry(erasure)
