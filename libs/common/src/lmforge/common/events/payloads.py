"""Versioned payload models: everything that crosses a service boundary on Kafka.

Each payload class names its CloudEvents ``type`` (``lmforge.<noun>.<verb>.v<N>``). A breaking
change gets a new class with a new version; consumers accept every version they know.
``docs/events/`` holds the JSON Schema of each, exported by ``make schemas``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class EventPayload(BaseModel):
    """Base of every event payload. ``event_type`` is the CloudEvents ``type`` attribute."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event_type: ClassVar[str]


def record_key(source: str, source_id: str) -> str:
    """A record's stable key (and Kafka message key on data topics)."""
    return f"{source}:{source_id}"


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class UpstreamRecord(BaseModel):
    """The documented JSON that any upstream producer writes to an ingest topic (no envelope needed)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    source: str = Field(min_length=1, max_length=200, description="Business system the record comes from.")
    source_id: str = Field(min_length=1, max_length=200, description="The record's id in that system.")
    text: str = Field(min_length=1, max_length=100_000)
    metadata: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(default=None, max_length=200)
    timestamp: datetime | None = None


class RawRecordV1(EventPayload):
    event_type: ClassVar[str] = "lmforge.record.raw.v1"

    record_id: str
    source: str
    source_id: str
    text: str
    content_hash: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    timestamp: datetime | None = None
    ingested_at: datetime


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class CleanedRecordV1(EventPayload):
    event_type: ClassVar[str] = "lmforge.record.cleaned.v1"

    record_id: str
    source: str
    source_id: str
    text: str
    content_hash: str
    raw_content_hash: str
    split: Split
    label: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    masked_entities: dict[str, int] = Field(default_factory=dict)


class DatasetVersionCreatedV1(EventPayload):
    event_type: ClassVar[str] = "lmforge.dataset.version_created.v1"

    dataset: str
    version: int
    manifest_uri: str
    record_count: int
    split_counts: dict[str, int]
    config_hash: str


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int = Field(default=200, ge=1, le=100_000)
    learning_rate: float = Field(default=3e-3, gt=0, le=1)
    batch_size: int = Field(default=16, ge=1, le=1024)
    max_seq_len: int = Field(default=128, ge=8, le=4096)
    early_stopping_patience: int = Field(default=3, ge=0)
    eval_every: int = Field(default=50, ge=1)
    seed: int = 0


class TrainingRequestedV1(EventPayload):
    event_type: ClassVar[str] = "lmforge.training.requested.v1"

    job_id: str
    model_name: str
    dataset: str
    dataset_version: int
    dataset_manifest_uri: str
    base_model: str = "builtin:tiny-gpt2"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    requested_by: str | None = None


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TrainingStatusV1(EventPayload):
    event_type: ClassVar[str] = "lmforge.training.status.v1"

    job_id: str
    model_name: str
    state: JobState
    step: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)
    error: str | None = None


class ModelReadyV1(EventPayload):
    event_type: ClassVar[str] = "lmforge.model.ready.v1"

    model_name: str
    run_id: str
    job_id: str
    artifact_uri: str
    base_model: str
    dataset: str
    dataset_version: int
    dataset_manifest_uri: str
    hyperparameters: Hyperparameters
    metrics: dict[str, float]


class ModelVersionRegisteredV1(EventPayload):
    event_type: ClassVar[str] = "lmforge.model.version_registered.v1"

    model_name: str
    version: int
    run_id: str
    artifact_uri: str
    metrics: dict[str, float]


class AliasMovedV1(EventPayload):
    """An alias (e.g. ``production``) now points at ``version``; inference deploys it."""

    event_type: ClassVar[str] = "lmforge.model.alias_moved.v1"

    model_name: str
    alias: str
    version: int
    previous_version: int | None
    artifact_uri: str
    reason: str


class DeploymentState(StrEnum):
    DEPLOYED = "deployed"
    FAILED = "failed"


class DeploymentResultV1(EventPayload):
    event_type: ClassVar[str] = "lmforge.model.deployment.v1"

    model_name: str
    alias: str
    version: int
    state: DeploymentState
    triton_model: str
    error: str | None = None


EVENT_PAYLOADS: tuple[type[EventPayload], ...] = (
    RawRecordV1,
    CleanedRecordV1,
    DatasetVersionCreatedV1,
    TrainingRequestedV1,
    TrainingStatusV1,
    ModelReadyV1,
    ModelVersionRegisteredV1,
    AliasMovedV1,
    DeploymentResultV1,
)
PAYLOADS_BY_TYPE: dict[str, type[EventPayload]] = {p.event_type: p for p in EVENT_PAYLOADS}
