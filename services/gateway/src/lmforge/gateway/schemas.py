"""The public request and response bodies of ``/v1``.

These are the public contract, kept apart from the internal services' own models on purpose: a
field an internal service adds (an artifact URI, a manifest location) reaches no client until it
is added here. Every string a client sends is bounded, every name has the one name pattern and
every integer has bounds (``lmforge.common.names``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from lmforge.common.events import DeploymentState, Hyperparameters, JobState
from lmforge.common.names import (
    API_KEY_ID_PATTERN,
    NAME_BODY,
    NO_NUL_PATTERN,
    DatasetName,
    JobId,
    ModelName,
    ModelReference,
    SourceName,
    VersionNumber,
)

from .auth import Scope

# The most tokens one completion may ask for; inference's own limit must not be lower.
MAX_COMPLETION_TOKENS = 256
MAX_PROMPTS = 16
MAX_PROMPT_CHARS = 20_000

# A base model a client may name: a built-in one. Trainer-side folders are not the client's to name.
BASE_MODEL_PATTERN = rf"^builtin:{NAME_BODY}$"

Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]


class StrictBody(BaseModel):
    """A request body: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


# --- records ---------------------------------------------------------------------------------


class RecordResult(BaseModel):
    record_id: str = Field(description="`<source>:<source_id>`")
    status: Literal["accepted", "duplicate"]
    event_id: str


class IngestResponse(BaseModel):
    accepted: int = Field(ge=0)
    duplicates: int = Field(ge=0)
    records: list[RecordResult]


# --- datasets --------------------------------------------------------------------------------


class DatasetVersionRequest(StrictBody):
    sources: list[SourceName] | None = Field(
        default=None, max_length=100, description="Only records from these sources (default: all)."
    )


class DatasetVersion(BaseModel):
    dataset: DatasetName
    version: VersionNumber
    record_count: int = Field(ge=0)
    split_counts: dict[str, int]
    config_hash: str


class ManifestRecord(BaseModel):
    record_id: str
    content_hash: str
    split: str
    sensitivity: str | None = Field(default=None, description="none, low or high: the personal data masked in it.")


class SupersededRecord(BaseModel):
    record_id: str
    content_hash: str


class DatasetManifest(DatasetVersion):
    """An immutable dataset version: every record id and content hash, splits, config, offsets."""

    created_at: datetime
    pipeline_config: dict[str, Any]
    sources: list[str]
    source_offsets: dict[str, dict[str, int]] = Field(description="topic -> partition -> next offset")
    records: list[ManifestRecord]
    superseded: list[SupersededRecord] = Field(
        default_factory=list, description="Older texts of records edited upstream: not in this version."
    )
    dropped: dict[str, int] = Field(
        default_factory=dict,
        description="Records dropped by the pipeline, by reason (duplicate, near_duplicate, empty).",
    )
    masked: dict[str, int] = Field(
        default_factory=dict, description="Personal data masked, by type (email, phone, ...)."
    )
    sensitivity: dict[str, int] = Field(
        default_factory=dict, description="Records by sensitivity level (none, low, high): the highest found in each."
    )


class PipelineStats(BaseModel):
    cleaned: int = Field(ge=0)
    dropped: dict[str, int] = Field(description="reason (duplicate, near_duplicate, empty) -> count")


# --- training --------------------------------------------------------------------------------


class TrainingJobRequest(StrictBody):
    model_name: ModelName
    dataset: DatasetName
    dataset_version: VersionNumber
    base_model: str = Field(default="builtin:tiny-gpt2", pattern=BASE_MODEL_PATTERN)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class TrainingJobAccepted(BaseModel):
    job_id: JobId
    state: Literal["requested"]
    status_url: str


class TrainingJob(BaseModel):
    job_id: str
    run_id: str
    model_name: str
    dataset: str
    dataset_version: int
    base_model: str
    hyperparameters: dict[str, Any]
    state: JobState
    step: int
    metrics: dict[str, float]
    error: str | None = Field(default=None, description="Why the job failed, in one line.")
    created_at: datetime
    updated_at: datetime


class TrainingJobCancelled(BaseModel):
    job_id: str
    state: JobState


# --- models ----------------------------------------------------------------------------------


class GateResult(BaseModel):
    passed: bool
    reasons: list[str]
    ceiling: float | None = None
    compared_to: int | None = None
    compared_perplexity: float | None = None


class Deployment(BaseModel):
    """The last deployment of this version (all fields empty before the first)."""

    state: DeploymentState | None = None
    alias: str | None = None
    triton_model: str | None = None
    error: str | None = None
    at: datetime | None = None


class ModelVersion(BaseModel):
    model_name: str
    version: int
    run_id: str
    job_id: str
    metrics: dict[str, float]
    gate: GateResult
    deployment: Deployment
    created_at: datetime


class Model(BaseModel):
    name: str
    aliases: dict[str, int] = Field(description="alias -> version")
    versions: list[ModelVersion]


class AliasRequest(StrictBody):
    version: VersionNumber
    reason: str = Field(default="manual", max_length=500, pattern=NO_NUL_PATTERN)


class AliasMoved(BaseModel):
    model_name: str
    alias: str
    version: int
    previous_version: int | None
    reason: str


class LineageDataset(BaseModel):
    name: str
    version: int
    record_count: int
    split_counts: dict[str, int]
    config_hash: str
    source_offsets: dict[str, dict[str, int]]
    record_ids: list[str]


class Lineage(ModelVersion):
    """A model version down to the records it was trained on."""

    base_model: str
    hyperparameters: dict[str, Any]
    dataset: LineageDataset


# --- completions -----------------------------------------------------------------------------


class CompletionRequest(StrictBody):
    """The OpenAI completions request (the fields lmforge honours)."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields lmforge does not use

    model: ModelReference
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        description=f"One prompt, or 1 to {MAX_PROMPTS} prompts (each up to {MAX_PROMPT_CHARS} characters)."
    )
    max_tokens: int = Field(default=16, ge=1, le=MAX_COMPLETION_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    user: str | None = Field(
        default=None, max_length=200, pattern=NO_NUL_PATTERN, description="Traffic splits are sticky per user."
    )

    def prompts(self) -> list[str]:
        return self.prompt if isinstance(self.prompt, list) else [self.prompt]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ServedBy(BaseModel):
    model: str
    alias: str
    version: int
    triton_model: str


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str = Field(description="`name@v<version>`: the version that answered")
    choices: list[CompletionChoice]
    usage: Usage
    lmforge: ServedBy


# --- /v1/models ------------------------------------------------------------------------------


class ModelObject(BaseModel):
    """A model id a completion may name: a served name, `name@alias` or `name@v<version>`."""

    id: str
    object: Literal["model"]
    created: int = Field(description="Unix seconds: when what answers under this id was deployed.")
    owned_by: Literal["lmforge"]


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


# --- API keys --------------------------------------------------------------------------------

MAX_KEY_LIFETIME_S = 10 * 365 * 24 * 3600
MAX_REQUESTS_PER_MINUTE = 1_000_000
MAX_COMPLETION_TOKENS_PER_DAY = 10**12

ApiKeyId = Annotated[
    str,
    StringConstraints(pattern=API_KEY_ID_PATTERN),
    Field(description="An API key's id: the `<id>` in `lmf_<id>_<secret>`.", examples=["0123456789ab"]),
]


class ApiKeyRequest(StrictBody):
    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL_PATTERN)
    scopes: list[Scope] = Field(max_length=len(Scope))
    expires_in_s: int | None = Field(
        default=None,
        ge=1,
        le=MAX_KEY_LIFETIME_S,
        description="The key expires this many seconds from now (up to 10 years); default: never.",
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=MAX_REQUESTS_PER_MINUTE,
        description="This key's own requests per minute; default: the gateway's.",
    )
    completion_tokens_per_day: int | None = Field(
        default=None,
        ge=1,
        le=MAX_COMPLETION_TOKENS_PER_DAY,
        description="This key's own completion token budget per model and UTC day; default: the gateway's.",
    )


class ApiKey(BaseModel):
    """An API key as listed: never its secret, nor the secret's hash."""

    key_id: str
    name: str
    scopes: list[Scope]
    state: Literal["active", "revoked", "expired"]
    created_at: datetime
    expires_at: datetime | None = Field(description="Null: the key does not expire.")
    revoked_at: datetime | None
    rotated_at: datetime | None = Field(description="When the key last got a new secret.")
    last_used_at: datetime | None = Field(description="The last authenticated request, to the minute.")
    bootstrap: bool = Field(description="The admin key from the gateway's settings: rotated or removed there.")
    requests_per_minute: int = Field(description="The request rate that applies to this key.")
    completion_tokens_per_day: int = Field(description="The completion token budget per model and UTC day.")


class ApiKeyCreated(BaseModel):
    key_id: str
    name: str
    scopes: list[Scope]
    expires_at: datetime | None
    key: str = Field(description="Shown once; only its hash is stored.")
    note: str
