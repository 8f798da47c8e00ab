"""``POST /records``: one record, a JSON array, or JSONL (body or multipart file upload)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ValidationError

from lmforge.common.events import UpstreamRecord
from lmforge.common.http import payload_too_large

from .settings import IngestSettings
from .store import RawRecordStore

router = APIRouter()


class RecordResult(BaseModel):
    record_id: str
    status: str
    event_id: str


class IngestResponse(BaseModel):
    accepted: int
    duplicates: int
    records: list[RecordResult]


def _invalid(message: str, **extra: Any) -> HTTPException:
    return HTTPException(422, {"code": "invalid_record", "message": message, **extra})


def _parse_jsonl(text: str) -> list[Any]:
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise _invalid(f"line {n}: not JSON ({exc.msg})", line=n) from exc
    return items


async def _read_items(request: Request, settings: IngestSettings) -> list[Any]:
    declared = request.headers.get("content-length")
    if declared and int(declared) > settings.max_request_bytes:
        raise payload_too_large(f"request body over {settings.max_request_bytes} bytes")
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if ctype == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise _invalid("multipart upload needs a 'file' part holding JSONL")
        data = await upload.read()
        if len(data) > settings.max_request_bytes:
            raise payload_too_large(f"upload over {settings.max_request_bytes} bytes")
        return _parse_jsonl(data.decode("utf-8", "replace"))
    body = await request.body()
    if len(body) > settings.max_request_bytes:
        raise payload_too_large(f"request body over {settings.max_request_bytes} bytes")
    if ctype in ("application/x-ndjson", "application/jsonl", "application/x-jsonlines"):
        return _parse_jsonl(body.decode("utf-8", "replace"))
    if ctype != "application/json":
        raise HTTPException(415, f"unsupported content type {ctype!r}: use JSON, JSONL or a multipart upload")
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError as exc:
        raise _invalid(f"body is not JSON: {exc.msg}") from exc
    return parsed if isinstance(parsed, list) else [parsed]


@router.post("/records", status_code=202, response_model=IngestResponse)
async def post_records(request: Request) -> IngestResponse:
    """Validate every record, store each once, and answer after the broker acknowledged them."""
    settings: IngestSettings = request.app.state.settings
    store: RawRecordStore = request.app.state.store
    items = await _read_items(request, settings)
    if not items:
        raise _invalid("no records in the request")
    if len(items) > settings.max_records_per_request:
        raise payload_too_large(f"{len(items)} records: at most {settings.max_records_per_request} per request")
    records = []
    for i, item in enumerate(items):
        try:
            records.append(UpstreamRecord.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "<record>"
            where = f"records[{i}].{field}" if len(items) > 1 else field
            raise _invalid(f"{where}: {err['msg']}", index=i, field=field) from exc
    results = await store.accept(records)
    accepted = sum(r.status == "accepted" for r in results)
    return IngestResponse(
        accepted=accepted,
        duplicates=len(results) - accepted,
        records=[RecordResult(record_id=r.record_id, status=r.status, event_id=r.event_id) for r in results],
    )
