"""Versioned payload models: everything that crosses a service boundary on Kafka.

Each payload class names its CloudEvents ``type`` (``lmforge.<noun>.<verb>.v<N>``). A breaking
change gets a new class with a new version; consumers accept every version they know.
``docs/events/`` holds the JSON Schema of each, exported by ``make schemas``.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from ..names import NAME_PATTERN, NO_NUL_PATTERN


class EventPayload(BaseModel):
    """Base of every event payload. ``event_type`` is the CloudEvents ``type`` attribute."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event_type: ClassVar[str]


def record_key(source: str, source_id: str) -> str:
    """A record's stable key (and Kafka message key on data topics)."""
    return f"{source}:{source_id}"


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


NO_NUL = NO_NUL_PATTERN
# No NUL, and at least one character that is not whitespace (as ``str.isspace`` sees it). The
# whitespace is spelled out, not ``\s``, which means other characters in other engines: pydantic's
# (Rust) counts U+0085 and not U+FEFF, ECMA-262 (JSON Schema validators) the other way round.
_WHITESPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = rf"^[^\x00]*[^\x00{_WHITESPACE}][^\x00]*$"
# A record's text, source id and label: at most this many characters.
TEXT_MAX_CHARS, SOURCE_ID_MAX_CHARS, LABEL_MAX_CHARS = 100_000, 200, 200

_METADATA_KEY = {"type": "string", "maxLength": 200, "pattern": NO_NUL}
_METADATA_SCALAR = [{"type": "string", "pattern": NO_NUL}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}]
_METADATA_SCHEMA = {
    "type": "object",
    "propertyNames": _METADATA_KEY,
    "additionalProperties": {
        "anyOf": [
            *_METADATA_SCALAR,
            {"type": "array", "items": {"anyOf": _METADATA_SCALAR}},
            {"type": "object", "propertyNames": _METADATA_KEY, "additionalProperties": {"anyOf": _METADATA_SCALAR}},
        ]
    },
    "description": "Attributes: strings, numbers, booleans, null, or one level of lists or objects of those.",
}


def _check_metadata(value: Any, where: str, depth: int = 0) -> None:
    """What ``_METADATA_SCHEMA`` says, with an error that names the place."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where}: NUL character")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"{where}: not valid Unicode (a lone surrogate)") from exc
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: not a finite number")
    elif value is None or isinstance(value, bool | int):
        pass
    elif depth >= 2 or not isinstance(value, list | dict):
        raise ValueError(f"{where}: nested deeper than one list or object")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_metadata(item, f"{where}[{i}]", depth + 1)
    else:
        for key, item in value.items():
            if len(key) > 200:
                raise ValueError(f"{where}: keys are up to 200 characters")
            _check_metadata(key, f"{where} key", depth)
            _check_metadata(item, f"{where}.{key}", depth + 1)


class UpstreamRecord(BaseModel):
    """The documented JSON that any upstream producer writes to an ingest topic (no envelope needed).

    Strings are kept as sent (whitespace included); none may hold a NUL character.
    """

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        pattern=NAME_PATTERN,
        description="Business system the record comes from: lowercase letters, digits, '.', '_', '-'.",
        examples=["crm"],
    )
    source_id: str = Field(
        max_length=SOURCE_ID_MAX_CHARS, pattern=NOT_BLANK, description="The record's id in that system."
    )
    text: str = Field(max_length=TEXT_MAX_CHARS, pattern=NOT_BLANK)
    metadata: Annotated[dict[str, Any], WithJsonSchema(_METADATA_SCHEMA)] = Field(default_factory=dict)
    label: str | None = Field(default=None, max_length=LABEL_MAX_CHARS, pattern=NO_NUL)
    timestamp: datetime | None = Field(default=None, description="When the record was made: an RFC 3339 string.")

    @field_validator("timestamp", mode="before")
    @classmethod
    def _a_date_time_string(cls, value: Any) -> Any:
        """JSON has no date-time type: the contract is a string. pydantic would also read a number as
        Unix seconds, which the published schema does not allow, so a number is refused."""
        if isinstance(value, int | float):
            raise ValueError("an RFC 3339 date-time string, not a number")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_shape(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        _check_metadata(metadata, "metadata")
        return metadata


class ErasureRequest(BaseModel):
    """A source record to erase (a data subject's request), named as its upstream system names it."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(pattern=NAME_PATTERN, examples=["crm"])
    source_id: str = Field(max_length=200, pattern=NOT_BLANK, examples=["T-1042"])


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


class RecordErasedV1(EventPayload):
    """A source record is erased (a data subject's request): every copy of its text goes.

    Ingest publishes it on ``raw-data`` after deleting its raw rows, keyed like the record, so it
    follows the record's own events in its partition. Preprocess publishes it on ``cleaned-data``
    once the cleaned rows, the dedup index entries and the record's rows in dataset versions are
    gone. It carries no text. Raw events for the record ingested before ``requested_at`` are
    ignored downstream, so a late delivery cannot bring the text back.
    """

    event_type: ClassVar[str] = "lmforge.record.erased.v1"

    erasure_id: str
    record_id: str
    source: str
    source_id: str
    requested_at: datetime
    requested_by: str | None = Field(default=None, description="The API key (name and id) that asked for it.")


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


class CleanedRecordV2(CleanedRecordV1):
    """``v1`` plus what a consumer needs to handle the record without re-deriving it: the
    sensitivity of what was masked in it and the recipe that cleaned it. A new version, not new
    fields in ``v1``: payloads forbid unknown fields, so validators of ``v1`` as published would
    refuse them."""

    event_type: ClassVar[str] = "lmforge.record.cleaned.v2"

    sensitivity: Literal["none", "low", "high"] = Field(
        description="The highest sensitivity of the personal data masked in it (docs/curation.md)."
    )
    recipe_hash: str = Field(description="SHA-256 of the recipe that cleaned it: a dataset manifest's config_hash.")


class DatasetVersionCreatedV1(EventPayload):
    event_type: ClassVar[str] = "lmforge.dataset.version_created.v1"

    dataset: str
    version: int
    manifest_uri: str
    record_count: int
    split_counts: dict[str, int]
    config_hash: str


class TrainingTask(StrEnum):
    """What a job trains (``docs/training.md`` has each one's data format)."""

    CAUSAL_LM = "causal_lm"  # continued pre-training: the loss on the whole text
    SFT = "sft"  # supervised fine-tuning: prompt/response pairs or chats, the loss on the responses only
    CLASSIFICATION = "classification"  # sequence classification on records with a label


class TrainingMethod(StrEnum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"  # LoRA over a 4-bit base: needs a CUDA GPU and bitsandbytes


class LrScheduler(StrEnum):
    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


class Precision(StrEnum):
    AUTO = "auto"  # bf16 on a GPU that has it, else fp16 on a GPU, else fp32
    FP32 = "fp32"
    BF16 = "bf16"  # GPU only
    FP16 = "fp16"  # GPU only


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(default=16, ge=1, le=512)
    alpha: int = Field(default=32, ge=1, le=4096)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]{1,100}$")]] | None = Field(
        default=None,
        max_length=64,
        description="Module names to adapt; null: the attention projections PEFT knows for the architecture.",
    )


class Hyperparameters(BaseModel):
    """A job's whole recipe: what to train (task, method) and how (the knobs). Every field has a
    default, so a request from before a field existed keeps its meaning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: TrainingTask = TrainingTask.CAUSAL_LM
    method: TrainingMethod = TrainingMethod.FULL
    lora: LoraSettings = Field(default_factory=LoraSettings)
    response_template: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="Plain-text records: the marker that starts the response (the prompt ends with it).",
    )
    max_steps: int = Field(default=200, ge=1, le=100_000)
    epochs: float | None = Field(default=None, gt=0, le=1000, description="If set, train this many epochs instead.")
    learning_rate: float = Field(default=3e-3, gt=0, le=1)
    lr_scheduler: LrScheduler = LrScheduler.LINEAR
    warmup_steps: int = Field(default=0, ge=0, le=100_000)
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="Used when warmup_steps is 0.")
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    max_grad_norm: float = Field(default=1.0, gt=0, le=1000)
    batch_size: int = Field(default=16, ge=1, le=1024, description="Per process and step, before accumulation.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    max_seq_len: int = Field(default=128, ge=8, le=4096)
    early_stopping_patience: int = Field(default=3, ge=0, le=1000)
    eval_every: int = Field(default=50, ge=1, le=100_000, description="Steps between evaluations and checkpoints.")
    log_every: int = Field(default=10, ge=1, le=100_000)
    precision: Precision = Precision.AUTO
    gradient_checkpointing: bool = False
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    eval_max_samples: int = Field(
        default=64, ge=0, le=10_000, description="Test records answered greedily for ROUGE-L/BLEU (0: none)."
    )
    eval_max_new_tokens: int = Field(default=48, ge=1, le=1024)


class SearchParameter(BaseModel):
    """One hyperparameter's search space: a list of ``values``, or a ``low``..``high`` range."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    values: list[float | int | str | bool] | None = Field(default=None, min_length=1, max_length=100)
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _one_space(self) -> SearchParameter:
        ranged = self.low is not None or self.high is not None
        if (self.values is None) == (not ranged):
            raise ValueError("give either values or a low..high range")
        if ranged and (self.low is None or self.high is None or self.high < self.low):
            raise ValueError("a range needs low <= high")
        if self.log and ranged and (self.low or 0) <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SearchSpec(BaseModel):
    """A hyperparameter search: ``trials`` training runs of the job's recipe, each with the
    parameters a sampler picks (``grid``, ``random`` or Optuna's ``tpe``); the best trial by
    ``metric`` becomes the model version (``docs/training.md``, "Hyperparameter search")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["grid", "random", "tpe"] = "random"
    parameters: dict[Annotated[str, Field(pattern=r"^[a-z_]+(\.[a-z_]+)?$")], SearchParameter] = Field(
        min_length=1, max_length=20, description="Hyperparameter names (lora.r for nested ones) and their spaces."
    )
    trials: int = Field(default=8, ge=1, le=100)
    metric: str = Field(default="val_loss", min_length=1, max_length=100)
    direction: Literal["min", "max"] = "min"
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


class TrainingRequestedV1(EventPayload):
    event_type: ClassVar[str] = "lmforge.training.requested.v1"

    job_id: str
    model_name: str
    dataset: str
    dataset_version: int
    dataset_manifest_uri: str
    base_model: str = "builtin:tiny-gpt2"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    search: SearchSpec | None = None
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


class BaselineEvaluation(BaseModel):
    """The version an alias (``production``) pointed at when the run started, measured by the same
    run on the same records: what the registry's gate compares the new version with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str
    version: int
    tokenizer: str
    metrics: dict[str, float]


class EvaluationSummary(BaseModel):
    """A trained model measured on its dataset version's test split (``docs/training.md``).

    ``eval_set`` fingerprints the evaluated records (their ids and content hashes): two versions
    with the same fingerprint were measured on the same examples. ``tokenizer`` fingerprints the
    tokenizer: per-token metrics (perplexity, loss) compare only under the same one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: str = "test"
    eval_set: str
    tokenizer: str
    records: int
    metrics: dict[str, float]
    report_uri: str | None = None
    baseline: BaselineEvaluation | None = None


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
    evaluation: EvaluationSummary | None = None


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
    CleanedRecordV2,
    RecordErasedV1,
    DatasetVersionCreatedV1,
    TrainingRequestedV1,
    TrainingStatusV1,
    ModelReadyV1,
    ModelVersionRegisteredV1,
    AliasMovedV1,
    DeploymentResultV1,
)
PAYLOADS_BY_TYPE: dict[str, type[EventPayload]] = {p.event_type: p for p in EVENT_PAYLOADS}
