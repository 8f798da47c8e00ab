"""The public request and response bodies of ``/v1``.

These are the public contract, kept apart from the internal services' own models on purpose: a
field an internal service adds (an artifact URI, a manifest location) reaches no client until it
is added here. Every string a client sends is bounded, every name has the one name pattern and
every integer has bounds (``lmforge.common.names``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from lmforge.common.events import DeploymentState, Hyperparameters, JobState, LoraSettings, SearchSpec
from lmforge.common.names import (
    ALIAS_PATTERN,
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
from lmforge.common.splits import SplitSpec

from .auth import Scope

# The most tokens one completion may ask for; inference's own limit must not be lower.
MAX_COMPLETION_TOKENS = 256
MAX_PROMPTS = 16
MAX_PROMPT_CHARS = 20_000

# A base model a client may name: a built-in one, or a registered version (``model:<name>@<alias>``
# or ``model:<name>@v<N>``, continual fine-tuning). Trainer-side folders are not the client's to name.
_ALIAS_BODY = ALIAS_PATTERN.removeprefix("^").removesuffix("$")
BASE_MODEL_PATTERN = rf"^(builtin:{NAME_BODY}|model:{NAME_BODY}@{_ALIAS_BODY})$"

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


# --- erasure ---------------------------------------------------------------------------------

ERASURE_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class ErasedFromVersion(BaseModel):
    dataset: str
    version: int = Field(ge=1)


class Erasure(BaseModel):
    """An erasure and its audit trail (docs/curation.md, "Erasure"). No text is kept anywhere.

    ``requested``: ingest deleted the raw rows and the event is on its way; ``applied``:
    preprocess removed the cleaned rows, the dedup entries and the record's rows in dataset versions.
    """

    erasure_id: str = Field(pattern=ERASURE_ID_PATTERN)
    record_id: str = Field(description="`<source>:<source id>`")
    source: str
    source_id: str
    status: Literal["requested", "applied"]
    requested_at: datetime
    requested_by: str | None = Field(description="The API key (name and id) that asked; null: an operator.")
    raw_records_erased: int = Field(ge=0, description="Raw rows (one per distinct text received) deleted at ingest.")
    applied_at: datetime | None = Field(default=None, description="When preprocess applied it.")
    cleaned_records_erased: int | None = Field(default=None, ge=0)
    dropped_records_erased: int | None = Field(default=None, ge=0)
    dataset_versions: list[ErasedFromVersion] | None = Field(
        default=None, description="Dataset versions the record was taken out of (shards and manifest)."
    )


# --- datasets --------------------------------------------------------------------------------


# How a version's records are split (docs/curation.md, "Splits"): the one model preprocess applies.
DatasetSplit = SplitSpec


class DatasetVersionRequest(StrictBody):
    sources: list[SourceName] | None = Field(
        default=None, max_length=100, description="Only records from these sources (default: all)."
    )
    split: DatasetSplit = Field(
        default_factory=DatasetSplit, description="Split ratios and method (default: 8:1:1 by hash of the record id)."
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
    recipe: str | None = Field(
        default=None, description="The hash of the recipe that cleaned it (null: before recipes)."
    )
    masked: dict[str, int] | None = Field(
        default=None, description="Personal data masked in it, by type (absent: nothing, or an older version)."
    )


class SupersededRecord(BaseModel):
    record_id: str
    content_hash: str


class RecipeReference(BaseModel):
    name: str
    version: int
    hash: str


class VersionErasure(BaseModel):
    erasure_id: str
    records: int = Field(ge=0, description="Records taken out of the shards and the manifest.")
    superseded: int = Field(ge=0, description="Entries taken out of the superseded list.")


class DatasetManifest(DatasetVersion):
    """An immutable dataset version: every record id and content hash, splits, config, offsets."""

    created_at: datetime
    recipe: RecipeReference | None = Field(default=None, description="The curation recipe (docs/curation.md).")
    pipeline_config: dict[str, Any] = Field(description="The recipe's definition.")
    split: DatasetSplit | None = Field(
        default=None, description="The split it was cut with (null: versions cut before split specs, 8:1:1 by hash)."
    )
    sources: list[str]
    source_offsets: dict[str, dict[str, int]] = Field(description="topic -> partition -> next offset")
    records: list[ManifestRecord]
    superseded: list[SupersededRecord] = Field(
        default_factory=list, description="Older texts of records edited upstream: not in this version."
    )
    dropped: dict[str, int] = Field(
        default_factory=dict,
        description="Records dropped by the pipeline, by reason: duplicate, near_duplicate, empty, or the "
        "recipe filter that dropped them (char_length, language, blocklist, ...).",
    )
    masked: dict[str, int] = Field(
        default_factory=dict, description="Personal data masked, by type (email, phone, ...)."
    )
    sensitivity: dict[str, int] = Field(
        default_factory=dict, description="Records by sensitivity level (none, low, high): the highest found in each."
    )
    erased: list[VersionErasure] = Field(
        default_factory=list, description="Erasures that took records out of this version after it was cut."
    )


class PipelineStats(BaseModel):
    cleaned: int = Field(ge=0)
    dropped: dict[str, int] = Field(
        description="reason (duplicate, near_duplicate, empty, or a recipe filter's name) -> count"
    )


# ``GET /v1/pipeline/dropped``: a drop reason is a short lowercase name (preprocess refuses one it
# does not know), a record id is ``<source>:<source id>``, as the records' manifests name it.
DROP_REASON_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
MAX_RECORD_ID_CHARS = 401
MAX_DROPPED_PAGE = 1000
MAX_DROPPED_OFFSET = 1_000_000


class DroppedRecord(BaseModel):
    """A record that is in no dataset version, and why: the operator that dropped it, what it
    measured and the threshold it was held to."""

    raw_event_id: str = Field(description="The id of the raw-data event that carried the record.")
    record_id: str = Field(description="The record's id, `<source>:<source id>`.")
    reason: str = Field(
        description="duplicate, near_duplicate, empty, or the name of the recipe filter that dropped it "
        "(char_length, language, blocklist, ...)."
    )
    duplicate_of: str | None = Field(description="The kept record this one duplicates (null for other reasons).")
    operator: str | None = Field(description="The operator that dropped it (null for rows older than the field).")
    measured: float | None = Field(
        description="What the operator measured: the similarity for (near-)duplicates, the filter's value otherwise."
    )
    threshold: float | None = Field(description="The threshold the measured value was held to.")
    recipe_hash: str | None = Field(
        default=None, description="The hash of the recipe it was held to (null for rows older than the field)."
    )
    created_at: datetime = Field(description="When it was dropped.")


# --- training --------------------------------------------------------------------------------


# Bounds of a search's values: exact integers in every JSON client, finite floats.
MAX_SEARCH_INT = 2**53 - 1
MAX_SEARCH_FLOAT = 1e15
SearchFloat = Annotated[float, Field(ge=-MAX_SEARCH_FLOAT, le=MAX_SEARCH_FLOAT, allow_inf_nan=False)]
SearchValue = (
    bool
    | Annotated[int, Field(ge=-MAX_SEARCH_INT, le=MAX_SEARCH_INT)]
    | SearchFloat
    | Annotated[str, Field(max_length=200, pattern=NO_NUL_PATTERN)]
)
# What a search may vary: a field of the recipe, or ``lora.<field>``.
SEARCHABLE = frozenset(Hyperparameters.model_fields) - {"lora"} | {f"lora.{f}" for f in LoraSettings.model_fields}


class SearchValues(StrictBody):
    """A list of values to try (``grid`` tries every combination)."""

    values: Annotated[list[SearchValue], Field(min_length=1, max_length=100)]


class SearchRange(StrictBody):
    """A range to draw from (not for ``grid``): ``low`` at most ``high``; ``log`` (a log scale)
    needs ``low`` above 0 (at least 1 for integers); a whole-number field needs ``integer``."""

    low: SearchFloat
    high: SearchFloat
    log: bool = Field(default=False, description="Draw on a log scale (low above 0, at least 1 for integers).")
    integer: bool = Field(default=False, description="Whole numbers only (needed for whole-number fields).")


class TrainingSearch(StrictBody):
    """A hyperparameter search (``docs/training.md``, "Hyperparameter search"): ``trials`` training
    runs of the request's recipe, each with the values a sampler picks; the best trial by ``metric``
    becomes the model version. What the schema cannot say is checked once the dataset version is
    known to exist (422 ``invalid_search``): a name that is no field of the recipe, a value or a
    range's end the recipe refuses, a range with ``low`` above ``high``, a log range from 0, a
    range in a ``grid`` search, a fractional range for a whole-number field."""

    method: Literal["grid", "random", "tpe"] = "random"
    parameters: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,40}(\.[a-z_]{1,40})?$")], SearchValues | SearchRange
    ] = Field(
        min_length=1,
        max_length=20,
        description="Recipe fields (`lora.r` for a nested one) and their spaces: `values`, or `low`..`high`.",
        json_schema_extra={"additionalProperties": False},  # a name off the pattern is refused
        examples=[{"learning_rate": {"low": 1e-5, "high": 1e-2, "log": True}, "lora.r": {"values": [8, 16, 32]}}],
    )
    trials: int = Field(default=8, ge=1, le=100)
    metric: str = Field(
        default="val_loss",
        pattern=r"^[a-z][a-z0-9_]{0,99}$",
        description="The job metric that ranks the trials: a validation one (`val_loss`), not a test one.",
    )
    direction: Literal["min", "max"] = "min"
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    def spec(self) -> SearchSpec:
        """The trainer's search spec; ``ValueError`` (naming the parameter) for what every trial of
        the search, or the search itself, would fail on."""
        unknown = sorted(name for name in self.parameters if name not in SEARCHABLE)
        if unknown:
            raise ValueError(f"parameters: not a hyperparameter: {', '.join(unknown[:5])}")
        for name, space in self.parameters.items():
            if isinstance(space, SearchValues):
                tried = list(space.values)
            else:
                if self.method == "grid":
                    raise ValueError(f"parameters.{name}: a grid search needs a list of values")
                if space.high < space.low:
                    raise ValueError(f"parameters.{name}: a range needs low <= high")
                if space.log and (space.low < 1 if space.integer else space.low <= 0):
                    raise ValueError(f"parameters.{name}: a log range needs low > 0 (>= 1 for integers)")
                if not space.integer and _recipe_field(name).annotation is int:
                    raise ValueError(f"parameters.{name}: takes whole numbers (integer: true)")
                tried = [round(space.low), round(space.high)] if space.integer else [space.low, space.high]
            for value in tried:
                _check_value(name, value)
        return SearchSpec.model_validate(self.model_dump())


def _recipe_field(name: str) -> Any:
    head, _, nested = name.partition(".")
    return LoraSettings.model_fields[nested] if nested else Hyperparameters.model_fields[head]


def _check_value(name: str, value: Any) -> None:
    """A recipe with ``value`` for ``name`` is valid, or ``ValueError`` says why not."""
    head, _, nested = name.partition(".")
    try:
        Hyperparameters.model_validate({head: {nested: value}} if nested else {head: value})
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ValueError(f"parameters.{name}: {json.dumps(value)[:40]} is refused: {reason}") from None


class TrainingJobRequest(StrictBody):
    model_name: ModelName
    dataset: DatasetName
    dataset_version: VersionNumber
    base_model: str = Field(
        default="builtin:tiny-gpt2",
        pattern=BASE_MODEL_PATTERN,
        description=(
            "`builtin:<name>` (`tiny-gpt2`, `smollm2-135m-instruct`, `all-minilm-l6-v2`), or a registered "
            "version to fine-tune further: `model:<name>@<alias>` or `model:<name>@v<version>`."
        ),
        examples=["builtin:smollm2-135m-instruct", "model:support-assistant@production"],
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    search: TrainingSearch | None = Field(
        default=None, description="Run a hyperparameter search instead of one training (`docs/training.md`)."
    )


class TrainingJobAccepted(BaseModel):
    job_id: JobId
    state: Literal["requested"]
    status_url: str


class BaselineEvaluation(BaseModel):
    """The version the alias (``production``) pointed at when the run started, measured by the same
    run on the same records: what the gate compares with."""

    alias: str
    version: int
    tokenizer: str
    metrics: dict[str, float]


class Evaluation(BaseModel):
    """The trained model measured once, after training, on its dataset version's test split (or
    ``val`` when it has no test records)."""

    split: str
    eval_set: str = Field(description="A fingerprint of the evaluated records: equal means the same examples.")
    tokenizer: str = Field(description="A fingerprint of the tokenizer: per-token metrics compare only under one.")
    records: int
    metrics: dict[str, float]
    baseline: BaselineEvaluation | None = None


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
    evaluation: Evaluation | None = Field(default=None, description="Set once the job has succeeded.")
    error: str | None = Field(default=None, description="Why the job failed, in one line.")
    search: dict[str, Any] | None = Field(
        default=None, description="A search job: its spec. A trial: the values it tries."
    )
    parent_job_id: str | None = Field(default=None, description="A trial's search job.")
    trial: int | None = Field(default=None, description="A trial's number in its search, from 0.")
    created_at: datetime
    updated_at: datetime


class MetricPoint(BaseModel):
    step: int
    metrics: dict[str, float]
    at: datetime


class MetricHistory(BaseModel):
    job_id: str
    history: list[MetricPoint] = Field(
        description="Every progress line in order: training loss, learning rate, validation loss at evaluations..."
    )


class TrainingJobCancelled(BaseModel):
    job_id: str
    state: JobState


# --- models ----------------------------------------------------------------------------------


class GateResult(BaseModel):
    """The promotion gate's verdict (``docs/training.md``, "The gate"); versions registered before a
    field existed leave it empty."""

    passed: bool
    reasons: list[str]
    metric: str | None = Field(default=None, description="The metric the model's gate rule compares.")
    direction: Literal["min", "max"] | None = Field(default=None, description="Which way is better.")
    threshold: float | None = Field(default=None, description="The value must be at least (max) or at most (min) this.")
    min_gain: float | None = Field(default=None, description="How much better than the compared version it must be.")
    value: float | None = Field(default=None, description="This version's value of the metric.")
    eval_set: str | None = Field(default=None, description="What the value was measured on.")
    compared_to: int | None = Field(default=None, description="The version the alias pointed at.")
    compared_value: float | None = Field(default=None, description="That version's value, like with like.")
    compared_on: str | None = Field(default=None, description="Where that value comes from.")
    ceiling: float | None = Field(default=None, description="`threshold` of a `min` rule (older field).")
    compared_perplexity: float | None = Field(
        default=None, description="`compared_value` for val_perplexity (older field)."
    )


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
    evaluation: Evaluation | None = None
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


# --- the OpenAI-compatible routes ------------------------------------------------------------
#
# Requests: the fields lmforge honours are declared; a field OpenAI defines that lmforge does not
# support is accepted only with its neutral value (null, 0, false, ...) and refused (400, naming
# it) with any other; a field nobody defines is refused too. Nothing is silently ignored.

DEFAULT_MAX_TOKENS = 16  # OpenAI's completions default, used for chat too: no answer runs to the context's end
MAX_CHOICES = 8  # n
MAX_STOP = 4
MAX_STOP_CHARS = 100
MAX_MESSAGES = 64
MAX_CONTENT_PARTS = 32
# Exact as a JSON number in every client (2^53 - 1): a bound near 2^63 reads as a float, and a
# generated seed just above it passes the schema in float yet fails the integer check.
MAX_SEED = 2**53 - 1

Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS, pattern=NO_NUL_PATTERN)]


def _neutral(value: Any, allowed: tuple[Any, ...]) -> bool:
    """``value`` is one of ``allowed`` (``True`` is not ``1``, ``0.0`` is ``0``)."""
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def _refuse_unsupported(data: Any, declared: set[str], unsupported: dict[str, tuple[Any, ...]]) -> Any:
    """Drop the unsupported fields sent with a neutral value; refuse any other and every unknown field."""
    if not isinstance(data, dict):
        return data
    refused = [
        f"{k}={json.dumps(v)[:40]}"
        for k, v in data.items()
        if k in unsupported and v is not None and not _neutral(v, unsupported[k])
    ]
    unknown = [k[:40] for k in data if k not in declared and k not in unsupported]
    if refused or unknown:
        parts = [f"not supported by lmforge: {', '.join(refused[:5])}"] if refused else []
        parts += [f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown[:5])}"] if unknown else []
        first = (refused[0].partition("=")[0]) if refused else unknown[0]
        raise PydanticCustomError(
            "unsupported_parameter",
            "{detail}",
            {"detail": "; ".join(parts), "param": first, "code": "unsupported_parameter"},
        )
    return {k: v for k, v in data.items() if k not in unsupported}


# Shared by both routes: OpenAI's neutral values of what lmforge does not do.
_UNSUPPORTED_SAMPLING: dict[str, tuple[Any, ...]] = {
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
}
_UNSUPPORTED_COMPLETION = _UNSUPPORTED_SAMPLING | {
    "logprobs": (0,),
    "echo": (False,),
    "best_of": (1,),
    "suffix": (),
}
_UNSUPPORTED_CHAT = _UNSUPPORTED_SAMPLING | {
    "logprobs": (False,),
    "top_logprobs": (0,),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "parallel_tool_calls": (),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "web_search_options": (),
    "reasoning_effort": (),
    "verbosity": (),
    "service_tier": ("auto", "default"),
    "store": (False,),
    "metadata": ({},),
    "prompt_cache_key": (),
    "safety_identifier": (),
}
# What an assistant message read back from a chat completion may carry: accepted when empty.
_UNSUPPORTED_MESSAGE: dict[str, tuple[Any, ...]] = {
    "name": (),
    "refusal": (),
    "tool_calls": ([],),
    "tool_call_id": (),
    "function_call": (),
    "audio": (),
    "annotations": ([],),
}


class StreamOptions(StrictBody):
    include_usage: bool | None = Field(
        default=None, description="A last chunk with empty `choices` and the whole request's `usage`."
    )
    include_obfuscation: bool | None = Field(default=None, description="Accepted; lmforge adds no obfuscation.")


class SamplingRequest(StrictBody):
    """What both routes share: the model, sampling, stop sequences, ``n``, streaming, the caller."""

    _unsupported: ClassVar[dict[str, tuple[Any, ...]]] = _UNSUPPORTED_SAMPLING

    model: ModelReference = Field(
        description="`name` (its production alias), `name@alias`, or `name@v<version>`: as `GET /v1/models` lists them."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, le=MAX_COMPLETION_TOKENS, description=f"New tokens at most (default {DEFAULT_MAX_TOKENS})."
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0 (the default) is greedy.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus sampling; 1 (the default) is off.")
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES, description="Choices per prompt, generated concurrently.")
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP)] | None = Field(
        default=None, description=f"Up to {MAX_STOP} sequences; the text ends before the first one."
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Sampling seed, for repeatable samples.")
    stream: bool | None = Field(default=None, description="Server-sent events, ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(
        default=None,
        max_length=200,
        pattern=NO_NUL_PATTERN,
        description="The end user: traffic splits are sticky per user (default: the API key).",
    )

    @model_validator(mode="before")
    @classmethod
    def _only_what_lmforge_supports(cls, data: Any) -> Any:
        return _refuse_unsupported(data, set(cls.model_fields), cls._unsupported)

    def new_tokens(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS

    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def choices_per_prompt(self) -> int:
        return self.n or 1

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingRequest):
    """OpenAI's completions request: the fields lmforge honours."""

    _unsupported = _UNSUPPORTED_COMPLETION

    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        description=f"One prompt, or 1 to {MAX_PROMPTS} prompts (each up to {MAX_PROMPT_CHARS} characters)."
    )

    def prompts(self) -> list[str]:
        return self.prompt if isinstance(self.prompt, list) else [self.prompt]


class TextPart(StrictBody):
    type: Literal["text"]
    text: Prompt


class ChatMessage(StrictBody):
    """A message: system (or developer), user or assistant; its content a string or text parts."""

    role: Literal["system", "developer", "user", "assistant"] = Field(description="`developer` is read as `system`.")
    content: Prompt | Annotated[list[TextPart], Field(min_length=1, max_length=MAX_CONTENT_PARTS)]

    @model_validator(mode="before")
    @classmethod
    def _only_what_lmforge_supports(cls, data: Any) -> Any:
        return _refuse_unsupported(data, set(cls.model_fields), _UNSUPPORTED_MESSAGE)

    def forwarded(self) -> dict[str, str]:
        """What the model runtime gets: ``{"role", "content"}``, text parts joined by newlines."""
        content = self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatCompletionRequest(SamplingRequest):
    """OpenAI's chat completions request: the fields lmforge honours."""

    _unsupported = _UNSUPPORTED_CHAT

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: int | None = Field(
        default=None, ge=1, le=MAX_COMPLETION_TOKENS, description="New tokens at most; wins over `max_tokens`."
    )

    def new_tokens(self) -> int:
        return self.max_completion_tokens or super().new_tokens()


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ServedBy(BaseModel):
    """lmforge's own field: which model, alias and version answered, on which Triton model."""

    model: str
    alias: str | None = Field(description="Null when the request named a version.")
    version: int
    triton_model: str


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str = Field(description="`name@v<version>`: the version that answered (also X-Lmforge-Model-Version)")
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage
    lmforge: ServedBy


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str = Field(description="`name@v<version>`: the version that answered (also X-Lmforge-Model-Version)")
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage
    lmforge: ServedBy


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
        strict=True,
        ge=1,
        le=MAX_KEY_LIFETIME_S,
        description="The key expires this many seconds from now (up to 10 years); default: never.",
    )
    requests_per_minute: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=MAX_REQUESTS_PER_MINUTE,
        description="This key's own requests per minute; default: the gateway's.",
    )
    completion_tokens_per_day: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=MAX_COMPLETION_TOKENS_PER_DAY,
        description="This key's own completion token budget per model and UTC day; default: the gateway's.",
    )

    @field_validator("expires_in_s", "requests_per_minute", "completion_tokens_per_day", mode="before")
    @classmethod
    def _whole_numbers(cls, value: Any) -> Any:
        """A JSON number with no fraction (``60.0``) is an integer, as the schema counts them; a
        boolean or a string is not (the fields are strict: lax mode would read ``true`` as 1)."""
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


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
