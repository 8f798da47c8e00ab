"""Datasets: cut a version, list versions, read a version's manifest (lineage), pipeline stats."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lmforge.common.http import error_responses, only_query
from lmforge.common.label_studio import ExportTask
from lmforge.common.names import NO_NUL_PATTERN, DatasetName, SourceName, VersionNumber

from .label_studio import LabelAs, version_tasks_json
from .splits import SplitSpec
from .store import DatasetStore, EmptyDataset, VersionContention

router = APIRouter(responses=error_responses(422))


class CreateVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[SourceName] | None = Field(
        default=None, max_length=100, description="only records from these sources"
    )
    split: SplitSpec = Field(
        default_factory=SplitSpec,
        description="How records are split into train, val and test (default: 8:1:1 by hash of the record id).",
    )


class DatasetVersionInfo(BaseModel):
    dataset: str
    version: int
    manifest_uri: str = Field(description="Where the manifest is, in the artifact store (internal).")
    record_count: int
    split_counts: dict[str, int]
    config_hash: str


class ListedVersion(DatasetVersionInfo):
    created_at: datetime


class ManifestRecord(BaseModel):
    record_id: str
    content_hash: str
    split: str
    sensitivity: Literal["none", "low", "high"] | None = Field(
        default=None, description="The highest sensitivity of the personal data masked in it (newer versions)."
    )
    recipe: str | None = Field(
        default=None, description="The hash of the recipe that cleaned it (null: cleaned before recipes)."
    )
    masked: dict[str, int] | None = Field(
        default=None, description="Personal data masked in it, by type (absent: nothing, or an older version)."
    )


class RecipeReference(BaseModel):
    name: str
    version: int
    hash: str = Field(description="SHA-256 of the recipe's canonical JSON: the manifest's config_hash.")


class VersionErasure(BaseModel):
    erasure_id: str
    records: int = Field(description="Records taken out of the shards and the manifest.")
    superseded: int = Field(description="Entries taken out of the manifest's superseded list.")


class ErasureApplied(BaseModel):
    """An erasure's audit entry at preprocess: what was removed here. No text."""

    erasure_id: str
    record_id: str
    requested_at: datetime
    requested_by: str | None
    applied_at: datetime
    cleaned_records_erased: int
    dropped_records_erased: int
    events_forgotten: int = Field(description="Outbox rows of its cleaned-data events deleted (published or not).")
    dataset_versions: list[DatasetVersionRef] = Field(description="Versions it was taken out of.")


class DatasetVersionRef(BaseModel):
    dataset: str
    version: int


class DatasetManifest(BaseModel):
    """The manifest as stored next to the shards (shard URIs and the cutting trace included)."""

    model_config = ConfigDict(extra="allow")

    dataset: str
    version: int
    created_at: datetime
    config_hash: str
    recipe: RecipeReference | None = Field(default=None, description="The recipe of the service (newer versions).")
    pipeline_config: dict[str, Any] = Field(description="The recipe's definition (older versions: the fixed steps).")
    record_count: int
    split_counts: dict[str, int]
    split: SplitSpec | None = Field(
        default=None, description="The split it was cut with: ratios and by (null: before split specs, 8:1:1 by hash)."
    )
    sources: list[str]
    source_offsets: dict[str, dict[str, int]]
    shards: dict[str, str]
    records: list[ManifestRecord]
    dropped: dict[str, int] = Field(
        default_factory=dict, description="Records dropped when the version was cut, per reason (newer versions)."
    )
    masked: dict[str, int] = Field(default_factory=dict, description="Personal data masked, by type (newer versions).")
    sensitivity: dict[str, int] = Field(
        default_factory=dict, description="Records by sensitivity level: none, low, high (newer versions)."
    )
    erased: list[VersionErasure] = Field(
        default_factory=list, description="Erasures that took records out of this version after it was cut."
    )


class DroppedRecord(BaseModel):
    """A record that is not in any dataset version, and why."""

    raw_event_id: str
    record_id: str
    reason: str = Field(
        description="duplicate, near_duplicate, empty, or the name of the recipe filter that dropped it."
    )
    duplicate_of: str | None = Field(description="The kept record this one duplicates.")
    operator: str | None = Field(description="The operator that dropped it (null for rows older than the field).")
    measured: float | None = Field(description="What the operator measured: the similarity for (near-)duplicates.")
    threshold: float | None = Field(description="The threshold the measured value was held to.")
    recipe_hash: str | None = Field(
        default=None, description="The recipe it was held to (null for rows older than the field)."
    )
    created_at: datetime


class PipelineStats(BaseModel):
    cleaned: int
    dropped: dict[str, int]


def _store(request: Request) -> DatasetStore:
    return request.app.state.datasets  # type: ignore[no-any-return]


@router.post(
    "/datasets/{name}/versions",
    status_code=201,
    response_model=DatasetVersionInfo,
    responses=error_responses(409),
)
async def create_version(
    request: Request, name: DatasetName, body: Annotated[CreateVersion | None, Body()] = None
) -> Any:
    try:
        body = body or CreateVersion()
        return await _store(request).create_version(name, body.sources, body.split)
    except EmptyDataset as exc:
        raise HTTPException(409, {"code": "empty_dataset", "message": f"dataset {name}: {exc}"}) from exc
    except VersionContention as exc:
        raise HTTPException(409, {"code": "version_contention", "message": str(exc)}) from exc


@router.get("/datasets", response_model=list[ListedVersion])
async def list_datasets(request: Request) -> Any:
    return await _store(request).list_versions()


@router.get("/datasets/{name}/versions", response_model=list[ListedVersion])
async def list_versions(request: Request, name: DatasetName) -> Any:
    return await _store(request).list_versions(name)


@router.get("/datasets/{name}/versions/{version}", response_model=DatasetManifest, responses=error_responses(404))
async def get_version(request: Request, name: DatasetName, version: VersionNumber) -> Any:
    """The full manifest: record ids and content hashes, split counts, config, source offsets."""
    return await _manifest(_store(request), name, version)


async def _manifest(store: DatasetStore, name: str, version: int) -> dict[str, Any]:
    for v in await store.list_versions(name):
        if v["version"] == version:
            return store.manifest(v["manifest_uri"])
    raise HTTPException(404, {"code": "dataset_version_not_found", "message": f"no version {version} of {name}"})


@router.get(
    "/datasets/{name}/versions/{version}/label-studio",
    response_model=list[ExportTask],
    responses=error_responses(404),
    dependencies=[Depends(only_query("label_as", "from_name", "to_name"))],
)
async def export_label_studio(
    request: Request,
    name: DatasetName,
    version: VersionNumber,
    label_as: Annotated[LabelAs, Query(description="Where a record's label goes in its task.")] = "predictions",
    from_name: Annotated[str, Query(min_length=1, max_length=100, pattern=NO_NUL_PATTERN)] = "label",
    to_name: Annotated[str, Query(min_length=1, max_length=100, pattern=NO_NUL_PATTERN)] = "text",
) -> StreamingResponse:
    """The version's records as Label Studio tasks (a JSON array, streamed from its shards): the
    cleaned text, record id and split, and the label as a ``choices`` result (docs/curation.md)."""
    store = _store(request)
    manifest = await _manifest(store, name, version)
    chunks = version_tasks_json(store.artifacts, manifest, label_as=label_as, from_name=from_name, to_name=to_name)
    return StreamingResponse(chunks, media_type="application/json")


@router.get("/dropped", response_model=list[DroppedRecord])
async def list_dropped(
    request: Request,
    # Any well-formed reason: one no record was dropped for (yet) lists nothing.
    reason: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = None,
    record_id: Annotated[str | None, Query(min_length=1, max_length=401)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Any:
    """Dropped records, oldest first: by reason, or every drop of one record id."""
    return await _store(request).dropped(reason, record_id, limit, offset)


@router.get("/stats", response_model=PipelineStats)
async def stats(request: Request) -> Any:
    return await _store(request).stats()


@router.get("/erasures/{erasure_id}", response_model=ErasureApplied, responses=error_responses(404))
async def get_erasure(request: Request, erasure_id: Annotated[str, Path(max_length=64)]) -> Any:
    """What an erasure removed here; ``404`` until it has been applied."""
    entry = await _store(request).erasure(erasure_id)
    if entry is None:
        raise HTTPException(404, {"code": "erasure_not_found", "message": f"erasure {erasure_id} not applied here"})
    return entry
