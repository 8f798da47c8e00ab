"""Recipes: a declared, versioned, hashed list of operators that turns a raw record into training text.

A recipe (YAML or JSON) names operators from ``OPERATORS``, in order, each with its parameters:

- cleaning operators (``cleaning.py``) change the text;
- filter operators (``filters.py``) keep or drop it, with the value they measured and the threshold;
- ``mask_pii`` masks personal data (``pii.py``) with a mode per type;
- ``near_dup`` (last, if present) sets the near-duplicate threshold (``near_dup.py``); that check
  runs in the database, after exact duplicates are dropped.

Every parameter is checked when the recipe is loaded, so a bad recipe fails at startup with the
operator and the parameter named. The hash is the SHA-256 of the recipe's canonical JSON, every
default filled in, so it names what runs: dataset manifests carry it (``config_hash``), and so
does every cleaned and dropped record. See docs/curation.md, "Recipes and operators".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmforge.common.names import NAME_PATTERN

from . import cleaning, filters
from .pii import MaskedText, MaskMode, PiiMasker, PiiType, Sensitivity

DEFAULT_RECIPE_PATH = Path(__file__).parent / "recipes" / "default.yaml"

OperatorKind = Literal["clean", "filter", "mask", "dedup"]


class RecipeError(ValueError):
    """A recipe that cannot be read or is not valid; the message names the file and the problem."""


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(_Params):
    pass


class NormalizeUnicodeParams(_Params):
    form: Literal["NFKC", "NFC"] = "NFKC"
    keep: str = Field(default=cleaning.KEPT_PUNCTUATION, description="characters left as they are")


class LengthParams(_Params):
    min: int = Field(default=1, ge=0)
    max: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LengthParams:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class RatioParams(_Params):
    max: float = Field(ge=0.0, le=1.0)


class RepeatedNgramsParams(_Params):
    n: int = Field(default=3, ge=1, le=20)
    max: float = Field(ge=0.0, le=1.0)


class LanguageParams(_Params):
    allowed: list[str] = Field(min_length=1)
    min_probability: float = Field(default=0.5, ge=0.0, le=1.0)
    min_chars: int = Field(default=20, ge=0)

    @field_validator("allowed")
    @classmethod
    def _known(cls, allowed: list[str]) -> list[str]:
        unknown = sorted(set(allowed) - filters.known_languages())
        if unknown:
            raise ValueError(f"unknown language codes {unknown} (ISO 639-1, as py3langid knows them)")
        return sorted(set(allowed))


class BlocklistParams(_Params):
    patterns: list[str] = Field(min_length=1)
    ignore_case: bool = True

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {i} {pattern!r} is not a regular expression: {exc}") from exc
        return patterns


class MaskPiiParams(_Params):
    modes: dict[PiiType, MaskMode] = Field(default_factory=dict)

    @field_validator("modes")
    @classmethod
    def _every_type(cls, modes: dict[PiiType, MaskMode]) -> dict[PiiType, MaskMode]:
        return {t: modes.get(t, MaskMode.PLACEHOLDER) for t in PiiType}  # every type named, so the hash says it


class NearDupParams(_Params):
    threshold: float = Field(default=0.9, ge=0.5, le=1.0)


TextFunction = Callable[[str], Any]  # str for cleaning, Verdict for filters, MaskedText for mask_pii


@dataclass(frozen=True)
class Operator:
    """A name a recipe can use: its kind, its parameters and how to make its function of the text."""

    name: str
    kind: OperatorKind
    params: type[_Params]
    build: Callable[[Any], TextFunction]


def _blocklist(p: BlocklistParams) -> TextFunction:
    compiled = [re.compile(x, re.IGNORECASE if p.ignore_case else 0) for x in p.patterns]
    return lambda text: filters.blocklist(text, compiled)


OPERATORS: Mapping[str, Operator] = {
    op.name: op
    for op in [
        Operator("fix_mojibake", "clean", NoParams, lambda p: cleaning.fix_mojibake),
        Operator("html_to_text", "clean", NoParams, lambda p: cleaning.strip_html),
        Operator(
            "normalize_unicode",
            "clean",
            NormalizeUnicodeParams,
            lambda p: lambda text: cleaning.normalize_unicode(text, p.form, p.keep),
        ),
        Operator("remove_control_chars", "clean", NoParams, lambda p: cleaning.remove_control_chars),
        Operator("collapse_whitespace", "clean", NoParams, lambda p: cleaning.collapse_whitespace),
        Operator("char_length", "filter", LengthParams, lambda p: lambda text: filters.char_length(text, p.min, p.max)),
        Operator(
            "token_length", "filter", LengthParams, lambda p: lambda text: filters.token_length(text, p.min, p.max)
        ),
        Operator("symbol_ratio", "filter", RatioParams, lambda p: lambda text: filters.symbol_ratio(text, p.max)),
        Operator("digit_ratio", "filter", RatioParams, lambda p: lambda text: filters.digit_ratio(text, p.max)),
        Operator(
            "repeated_ngrams",
            "filter",
            RepeatedNgramsParams,
            lambda p: lambda text: filters.repeated_ngrams(text, p.n, p.max),
        ),
        Operator(
            "language",
            "filter",
            LanguageParams,
            lambda p: lambda text: filters.language(text, p.allowed, p.min_probability, p.min_chars, exact=False),
        ),
        Operator("blocklist", "filter", BlocklistParams, _blocklist),
        Operator("mask_pii", "mask", MaskPiiParams, lambda p: lambda text: text),  # the masker is built per key
        Operator("near_dup", "dedup", NearDupParams, lambda p: lambda text: text),  # runs in the database
    ]
}
FILTER_OPERATORS = tuple(name for name, op in OPERATORS.items() if op.kind == "filter")


class Step(BaseModel):
    """One operator of a recipe. ``params`` are checked against the operator's own parameters and
    stored with every default filled in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _known_operator(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("op"), str):
            return data  # the field checks say what is missing
        operator = OPERATORS.get(data["op"])
        if operator is None:
            raise ValueError(f"unknown operator {data['op']!r} (known: {', '.join(OPERATORS)})")
        raw = data.get("params")
        if raw is None:
            raw = {}
        try:
            params = operator.params.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"operator {data['op']!r}: {_describe(exc, 'parameter ')}") from None
        return {**data, "params": params.model_dump(mode="json")}

    @property
    def operator(self) -> Operator:
        return OPERATORS[self.op]

    def parsed(self) -> Any:
        return self.operator.params.model_validate(self.params)


class Recipe(BaseModel):
    """A declared pipeline: a name, a version, and the operators in the order they run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    version: int = Field(ge=1)
    description: str = Field(default="", description="for readers; not part of the hash")
    operators: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _placement(self) -> Recipe:
        names = [s.op for s in self.operators]
        for once in ("mask_pii", "near_dup"):
            if names.count(once) > 1:
                raise ValueError(f"{once} is named {names.count(once)} times; at most once")
        if "near_dup" in names and names[-1] != "near_dup":
            raise ValueError("near_dup must be the last operator: it runs in the database after the others")
        return self

    def definition(self) -> dict[str, Any]:
        """What the hash is taken of: name, version and operators with every parameter."""
        return self.model_dump(mode="json", exclude={"description"})

    @cached_property
    def hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of ``definition()``: sorted keys, no spaces, UTF-8."""
        canonical = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def reference(self) -> dict[str, Any]:
        """How a manifest names the recipe."""
        return {"name": self.name, "version": self.version, "hash": self.hash}

    @property
    def near_dup_threshold(self) -> float | None:
        """The recipe's near-duplicate threshold; None when it has no ``near_dup`` step."""
        for step in self.operators:
            if step.op == "near_dup":
                return float(step.params["threshold"])
        return None

    def pipeline(self, pseudonym_key: str | bytes | None = None) -> Pipeline:
        return Pipeline(self, pseudonym_key)


@dataclass(frozen=True, slots=True)
class Drop:
    """Why a filter dropped a text: the operator, what it measured and the threshold."""

    operator: str
    measured: float
    threshold: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """A text run through a recipe: the cleaned text (what it was when a filter dropped it),
    what was masked, its sensitivity, and the drop, if a filter dropped it."""

    text: str
    masked: dict[str, int]
    sensitivity: Sensitivity
    dropped: Drop | None = None


class Pipeline:
    """A recipe made runnable: each step's function built once. The PII key comes from the
    service's settings, never from the recipe (a recipe is not secret; the key is)."""

    def __init__(self, recipe: Recipe, pseudonym_key: str | bytes | None = None) -> None:
        self.recipe = recipe
        self.masker: PiiMasker | None = None
        self._steps: list[tuple[str, OperatorKind, TextFunction]] = []
        for step in recipe.operators:
            params = step.parsed()
            if step.op == "mask_pii":
                try:
                    self.masker = PiiMasker(params.modes, key=pseudonym_key)
                except ValueError as exc:
                    raise RecipeError(f"recipe {recipe.name} v{recipe.version}: mask_pii: {exc}") from exc
            if step.operator.kind != "dedup":
                self._steps.append((step.op, step.operator.kind, step.operator.build(params)))

    def run(self, text: str) -> Outcome:
        """Every step in order. A filter that drops the text ends the run; a text that cleaning
        left empty is not filtered (it is dropped as ``empty``)."""
        masked: MaskedText | None = None
        for name, kind, fn in self._steps:
            if kind == "filter":
                if not text:
                    continue
                verdict: filters.Verdict = fn(text)
                if not verdict.keep:
                    drop = Drop(name, float(verdict.measured), float(verdict.threshold))
                    return _outcome(text, masked, drop)
            elif kind == "mask":
                assert self.masker is not None
                masked = self.masker.mask(text)
                text = masked.text
            else:
                text = fn(text)
        return _outcome(text, masked)

    def transform(self, text: str, masker: PiiMasker | None = None) -> cleaning.CleanedText:
        """The cleaning and masking steps only (no filter), with ``masker`` in place of the recipe's."""
        masked: MaskedText | None = None
        for _, kind, fn in self._steps:
            if kind == "mask":
                masker = masker or self.masker
                assert masker is not None
                masked = masker.mask(text)
                text = masked.text
            elif kind == "clean":
                text = fn(text)
        out = _outcome(text, masked)
        return cleaning.CleanedText(out.text, out.masked, out.sensitivity)


def _outcome(text: str, masked: MaskedText | None, drop: Drop | None = None) -> Outcome:
    if masked is None:
        return Outcome(text, {}, Sensitivity.NONE, drop)
    return Outcome(text, masked.counts, masked.sensitivity, drop)


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """A recipe from its parsed YAML or JSON; ``RecipeError`` naming ``source`` and each problem."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{source}: {_describe(exc)}") from None


def load_recipe(path: str | Path) -> Recipe:
    """A recipe file: ``.yaml``/``.yml`` or ``.json``."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise RecipeError(f"recipe {path}: not a .yaml, .yml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe {path}: cannot be read: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RecipeError(f"recipe {path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    return parse_recipe(data, f"recipe {path}")


@cache
def default_recipe() -> Recipe:
    """The recipe that ships with the service: Chinese and English business text."""
    return load_recipe(DEFAULT_RECIPE_PATH)


@cache
def default_pipeline() -> Pipeline:
    return default_recipe().pipeline()


def _describe(exc: ValidationError, prefix: str = "") -> str:
    """Pydantic's errors as ``where: what`` (``operators[3]: unknown operator 'foo'``)."""
    parts = []
    for error in exc.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{prefix}{where}: {message}" if where else message)
    return "; ".join(parts)
