"""Label Studio's JSON tasks as lmforge reads and writes them, declared once for the gateway,
ingest and preprocess (docs/curation.md, "Labels and Label Studio").

**Import.** ``ImportTask`` is one task of Label Studio's JSON export ("Export > JSON"), and
``label_studio_body`` the OpenAPI request body of a list of them. The published JSON Schema is
exactly what ingest accepts: a body that matches it is stored, a body that does not is refused,
and nothing else decides. A task:

- ``id``: an integer (64-bit) or a non-blank string of at most 200 characters; the record's
  ``source_id`` (as a string).
- ``data.text``: the text, with the constraints of a record's ``text`` (non-blank, at most
  100,000 characters). ``data.record_id`` (optional): a task from lmforge's own export names its
  record, ``<source>:<source id>``, and its import is an edit of that record, whatever the
  ``source`` of the import (``lmforge.ingest.label_studio``). Other keys of ``data`` are ignored.
- ``annotations`` (optional): each with ``result``, a list of results discriminated by ``type``:
  a ``choices`` result has ``value.choices``, exactly one class (a record's label: at most 200
  characters, no NUL), and there is at most one ``choices`` result in an annotation; a result of
  any other type is taken as it comes, and only the keys that carry no text are kept
  (``kept_result``). ``was_cancelled`` is a boolean, ``created_at`` and ``updated_at`` strings.
- Every other key (``predictions``, ``meta``, ``project``...) is allowed and ignored.

**Export.** ``ExportTask`` is one record of a dataset version as a task: its cleaned text, record
id and split, and its label as a ``choices`` result among ``predictions`` or ``annotations``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from .events.payloads import LABEL_MAX_CHARS, NOT_BLANK, SOURCE_ID_MAX_CHARS, TEXT_MAX_CHARS
from .names import NAME_BODY, NO_NUL_PATTERN

MAX_TASKS = 1000  # tasks per request, as records per POST /records
TASK_ID_MIN, TASK_ID_MAX = -(2**63), 2**63 - 1

Label = Annotated[str, StringConstraints(max_length=LABEL_MAX_CHARS, pattern=NO_NUL_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=TEXT_MAX_CHARS, pattern=NOT_BLANK)]
_SourceId = Annotated[str, StringConstraints(max_length=SOURCE_ID_MAX_CHARS, pattern=NOT_BLANK)]
_source_id = TypeAdapter(_SourceId)


def _integral(value: Any) -> Any:
    """A JSON number with no fraction (``7.0``) is an integer, as JSON Schema counts them."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _one_error(message: str) -> WrapValidator:
    """One error with ``message`` where the type's own checks (a union's branches) would give several."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            raise PydanticCustomError("invalid_value", message) from exc

    return WrapValidator(check)


TaskId = Annotated[
    Annotated[int, Field(strict=True, ge=TASK_ID_MIN, le=TASK_ID_MAX), BeforeValidator(_integral)] | _SourceId,
    _one_error("a 64-bit integer, or a non-blank string of at most 200 characters"),
    Field(description="An integer, or a non-blank string of at most 200 characters: the record's `source_id`."),
]

# ``<source>:<source id>``: a source name, then the source id, non-blank and at most 200 characters.
# Two patterns: one says the shape and the lengths, the other that the id is not blank.
_RECORD_ID_SHAPE = rf"^{NAME_BODY}:[\s\S]{{1,{SOURCE_ID_MAX_CHARS}}}$"
_RECORD_ID_NOT_BLANK = r"^[^:]*:" + NOT_BLANK.removeprefix("^")


def _record_id(value: str) -> str:
    _source_id.validate_python(value.split(":", 1)[1])  # not blank, as a record's source_id
    return value


RecordId = Annotated[
    str,
    StringConstraints(pattern=_RECORD_ID_SHAPE),
    AfterValidator(_record_id),
    _one_error("`<source>:<source id>`: a source name, ':' and a non-blank id of at most 200 characters"),
    WithJsonSchema(
        {
            "type": "string",
            "allOf": [{"pattern": _RECORD_ID_SHAPE}, {"pattern": _RECORD_ID_NOT_BLANK}],
            "description": "`<source>:<source id>`, as lmforge's export writes it.",
            "examples": ["crm:T-1"],
        }
    ),
]


class _Open(BaseModel):
    """Label Studio writes more keys than lmforge reads: they are allowed, and ignored."""

    model_config = ConfigDict(extra="allow")


class TaskData(_Open):
    text: Text = Field(description="The record's text: non-blank, at most 100,000 characters.")
    record_id: RecordId | None = Field(
        default=None,
        description="Set by lmforge's export: the record this task is. Its import is an edit of that "
        "record (same source and source id), whatever the import's `source`.",
    )


class ChoicesValue(_Open):
    choices: list[Label] = Field(min_length=1, max_length=1, description="Exactly one class: the record's label.")


class ChoicesResult(_Open):
    type: Literal["choices"]
    value: ChoicesValue


class OtherResult(_Open):
    """A result of any other type (``labels``, ``textarea``, ``rating``...): only its keys that carry
    no text are kept."""

    type: Annotated[str, WithJsonSchema({"type": "string", "not": {"const": "choices"}})]


def _result_kind(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    return "choices" if kind == "choices" else "other"


Result = Annotated[
    Annotated[ChoicesResult, Tag("choices")] | Annotated[OtherResult, Tag("other")],
    Discriminator(
        _result_kind,
        custom_error_type="invalid_result",
        custom_error_message="a result is an object with a string `type`",
    ),
]

# At most one choices result in an annotation: a record has one label.
_ONE_CHOICES: dict[str, Any] = {
    "contains": {"type": "object", "properties": {"type": {"const": "choices"}}, "required": ["type"]},
    "minContains": 0,
    "maxContains": 1,
}


class Annotation(_Open):
    id: Any = Field(default=None, description="Kept with the record (an integer, or a string).")
    was_cancelled: StrictBool = Field(default=False, description="A cancelled annotation is not read.")
    created_at: str | None = None
    updated_at: str | None = Field(
        default=None, description="The latest annotation (this, else `created_at`, compared as text) is read."
    )
    result: list[Result] = Field(
        default_factory=list,
        json_schema_extra=_ONE_CHOICES,
        description="At most one `choices` result, with exactly one choice.",
    )

    @model_validator(mode="after")
    def _one_choices_result(self) -> Annotation:
        if sum(isinstance(r, ChoicesResult) for r in self.result) > 1:
            raise ValueError("more than one choices result: a record has one label")
        return self


class ImportTask(_Open):
    """One task of a Label Studio JSON export: one record."""

    id: TaskId
    data: TaskData
    annotations: list[Annotation] = Field(
        default_factory=list,
        description="The latest one not cancelled gives the label (its choices result) and the results kept.",
    )


IMPORT_TASKS = TypeAdapter(list[ImportTask])


def latest_annotation(task: ImportTask) -> tuple[int, Annotation] | None:
    """The task's latest annotation not cancelled, with its index: the greatest ``updated_at`` (else
    ``created_at``, else none), compared as text; between equals, the later in the list."""
    live = [(i, a) for i, a in enumerate(task.annotations) if not a.was_cancelled]
    if not live:
        return None
    return max(live, key=lambda item: (item[1].updated_at or item[1].created_at or "", item[0]))


_KEPT_TEXT = re.compile(r"labels$")  # value keys whose list of class names is kept (labels, htmllabels...)


def _storable(value: str) -> bool:
    return len(value) <= LABEL_MAX_CHARS and "\x00" not in value and not re.search(r"[\ud800-\udfff]", value)


def kept_result(result: OtherResult) -> dict[str, Any]:
    """What is kept of a result that is not the label: ``type``, ``from_name`` and ``to_name`` (the
    labelling config's names) and, of ``value``, numbers and booleans (offsets, ratings) and the lists
    of class names under a key ending in ``labels``. Every other key is dropped: ``text`` (the span's
    or text area's words), ``html``, ``htmlfragment``, XPath offsets, ``meta`` and any other string."""
    kept: dict[str, Any] = {}
    raw = result.model_dump()
    for key in ("type", "from_name", "to_name"):
        if isinstance(raw.get(key), str) and _storable(raw[key]):
            kept[key] = raw[key]
    value = raw.get("value")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(item, bool | int) or (isinstance(item, float) and math.isfinite(item)):
                out[key] = item
            elif _KEPT_TEXT.search(key) and isinstance(item, list):
                out[key] = [x for x in item if isinstance(x, str) and _storable(x)]
        kept["value"] = out
    return kept


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with every ``$ref`` to its ``$defs`` replaced by the definition (none is recursive)
    and without null defaults."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return _inline(defs[ref.removeprefix("#/$defs/")], defs) | _inline(rest, defs)
        # FastAPI leaves ``"default": null`` out of an OpenAPI document: so is it here.
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs" and (k, v) != ("default", None)}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def import_tasks_schema(max_tasks: int = MAX_TASKS) -> dict[str, Any]:
    """The JSON Schema of an import body: a list of 1 to ``max_tasks`` tasks, with no ``$ref``."""
    schema = IMPORT_TASKS.json_schema()
    return _inline(schema, schema.get("$defs", {})) | {"minItems": 1, "maxItems": max_tasks}


def label_studio_body(max_tasks: int = MAX_TASKS) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a Label Studio import (``openapi_extra=``): the route reads its
    body itself, so it is declared here, from the same models ingest validates with."""
    return {
        "requestBody": {
            "required": True,
            "description": "A Label Studio JSON export: a list of tasks, each one record.",
            "content": {"application/json": {"schema": import_tasks_schema(max_tasks)}},
        }
    }


# --- export -----------------------------------------------------------------------------------


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExportChoices(_Closed):
    choices: list[str] = Field(min_length=1, max_length=1, description="The record's label.")


class ExportResult(_Closed):
    from_name: str = Field(description="The choices control's name (`from_name`, default `label`).")
    to_name: str = Field(description="The text object's name (`to_name`, default `text`).")
    type: Literal["choices"]
    value: ExportChoices


class ExportPrediction(_Closed):
    model_version: str = Field(description="`<dataset>@v<version>`.")
    result: list[ExportResult] = Field(min_length=1, max_length=1)


class ExportAnnotation(_Closed):
    result: list[ExportResult] = Field(min_length=1, max_length=1)


class ExportData(_Closed):
    text: str = Field(min_length=1, description="The record's cleaned text (personal data masked).")
    record_id: str = Field(
        pattern=rf"^{NAME_BODY}:", description="`<source>:<source id>`: an import of the task edits this record."
    )
    split: Literal["train", "val", "test"]


class ExportTask(_Closed):
    """One record of a dataset version as a Label Studio task. A record with a label has it in
    ``predictions`` (``label_as=predictions``, the default) or in ``annotations``; one without has ``data`` only."""

    model_config = ConfigDict(json_schema_extra={"not": {"required": ["predictions", "annotations"]}})

    data: ExportData
    predictions: list[ExportPrediction] | SkipJsonSchema[None] = Field(default=None, min_length=1, max_length=1)
    annotations: list[ExportAnnotation] | SkipJsonSchema[None] = Field(default=None, min_length=1, max_length=1)
