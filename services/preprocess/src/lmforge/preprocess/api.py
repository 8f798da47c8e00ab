"""Datasets: cut a version, list versions, read a version's manifest (lineage), pipeline stats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, Field

from .store import DatasetStore, EmptyDataset

router = APIRouter()
DatasetName = Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$", description="lowercase letters, digits, . _ -")


class CreateVersion(BaseModel):
    sources: list[str] | None = Field(default=None, description="only records from these sources")


def _store(request: Request) -> DatasetStore:
    return request.app.state.datasets  # type: ignore[no-any-return]


@router.post("/datasets/{name}/versions", status_code=201)
async def create_version(
    request: Request, body: CreateVersion | None = None, name: str = DatasetName
) -> dict[str, Any]:
    try:
        return await _store(request).create_version(name, (body.sources if body else None))
    except EmptyDataset as exc:
        raise HTTPException(409, {"code": "empty_dataset", "message": f"dataset {name}: {exc}"}) from exc


@router.get("/datasets")
async def list_datasets(request: Request) -> list[dict[str, Any]]:
    return await _store(request).list_versions()


@router.get("/datasets/{name}/versions")
async def list_versions(request: Request, name: str = DatasetName) -> list[dict[str, Any]]:
    return await _store(request).list_versions(name)


@router.get("/datasets/{name}/versions/{version}")
async def get_version(request: Request, version: int, name: str = DatasetName) -> dict[str, Any]:
    """The full manifest: record ids and content hashes, split counts, config, source offsets."""
    store = _store(request)
    for v in await store.list_versions(name):
        if v["version"] == version:
            return store.manifest(v["manifest_uri"])
    raise HTTPException(404, {"code": "dataset_version_not_found", "message": f"no version {version} of {name}"})


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    return await _store(request).stats()
