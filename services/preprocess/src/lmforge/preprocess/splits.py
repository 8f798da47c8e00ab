"""Which split (train, val, test) each record of a dataset version is in (docs/curation.md, "Splits").

A version is cut with a split spec: ``ratios`` of train, val and test, and ``by`` either

- ``hash``: a record's split is a function of ``sha256(record_id)`` and the ratios only, so it is
  the same in every version and after re-processing. The ratios are reduced to whole numbers in
  lowest terms (``0.8:0.1:0.1`` and ``16:2:2`` are ``8:1:1``), ``bucket = sha256 % (sum)``, and
  the buckets go to train, then val, then test. At ``8:1:1`` that is the split every cleaned record
  is given when it is cleaned (``cleaning.split_for``, the ``split`` column and event field);
- ``time``: the records in the order they were cleaned (``cleaned_records.id``, for an edited
  record the id of its newest text), the oldest share train, the next val, the newest test.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator
from pydantic_core import PydanticCustomError

from lmforge.common.events import Split

MAX_RATIO = 1_000_000
Ratio = Annotated[float, Field(strict=True, ge=0, le=MAX_RATIO, allow_inf_nan=False)]
SplitBy = Literal["hash", "time"]
# Assigns a split from a record's position in id order (0 = oldest) and its record id.
Assigner = Callable[[int, str], Split]


class SplitRatios(BaseModel):
    """How much of the version goes to each split, in proportion (``8, 1, 1`` or ``0.7, 0.2, 0.1``)."""

    model_config = ConfigDict(extra="forbid")

    train: Annotated[Ratio, Field(gt=0)] = Field(description="Above 0.")
    val: Ratio = Field(description="0 or more.")
    test: Ratio = Field(description="0 or more.")

    @model_validator(mode="after")
    def _train_is_not_empty(self) -> SplitRatios:
        if self.train <= 0:
            raise PydanticCustomError(
                "invalid_split",
                "split ratio train must be greater than 0 (val and test may be 0)",
                {"param": "train", "code": "invalid_split"},
            )
        return self

    def weights(self) -> tuple[int, int, int]:
        """The ratios as whole numbers in lowest terms: ``(8, 1, 1)`` for ``0.8, 0.1, 0.1``.

        Each split's share is taken to a millionth (``limit_denominator``), so the weights stay
        small enough for ``sha256 % total`` to reach every bucket: a share below that is 0, except
        train's, which keeps the smallest weight."""
        ratios = [Fraction(repr(float(v))) for v in (self.train, self.val, self.test)]
        total = sum(ratios)
        fractions = [(r / total).limit_denominator(10**6) for r in ratios]
        denominator = math.lcm(*(f.denominator for f in fractions))
        whole = [int(f * denominator) for f in fractions]
        if whole[0] == 0:  # train's share is below a millionth of the others': the smallest weight
            whole = [1] + [w * 10**6 for w in whole[1:]]
        divisor = math.gcd(*whole)
        train, val, test = (w // divisor for w in whole)
        return train, val, test

    @field_serializer("train", "val", "test")
    def _whole_numbers_as_integers(self, value: float) -> int | float:
        """Written back as given: ``8``, not ``8.0``."""
        return int(value) if value.is_integer() else value


DEFAULT_RATIOS = SplitRatios(train=8, val=1, test=1)


class SplitSpec(BaseModel):
    """The split of a dataset version: ``ratios`` (default 8:1:1) and ``by`` (default ``hash``)."""

    model_config = ConfigDict(extra="forbid")

    ratios: SplitRatios = Field(
        default_factory=lambda: DEFAULT_RATIOS.model_copy(),
        description="train, val and test in proportion: numbers from 0 to 1,000,000, train above 0.",
    )
    by: SplitBy = Field(
        default="hash",
        description="hash: by sha256(record_id), the same in every version; time: oldest records train, "
        "newest test, in the order they were cleaned.",
    )

    def manifest(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def assigner(self, count: int) -> Assigner:
        """The split of each of ``count`` records, streamed in id order."""
        weights = self.ratios.weights()
        if self.by == "hash":
            return lambda _position, record_id: split_by_hash(record_id, weights)
        train_end, val_end = time_cuts(count, weights)
        return lambda position, _record_id: (
            Split.TRAIN if position < train_end else Split.VAL if position < val_end else Split.TEST
        )


def split_by_hash(record_id: str, weights: tuple[int, int, int]) -> Split:
    train, val, test = weights
    bucket = int(hashlib.sha256(record_id.encode()).hexdigest(), 16) % (train + val + test)
    return Split.TRAIN if bucket < train else Split.VAL if bucket < train + val else Split.TEST


def time_cuts(count: int, weights: tuple[int, int, int]) -> tuple[int, int]:
    """Where train ends and where val ends among ``count`` records in time order: each cumulative
    share rounded half up, train at least one record."""
    train, val, test = weights
    total = train + val + test

    def rounded(share: int) -> int:
        return (2 * count * share + total) // (2 * total)

    train_end = min(count, max(1, rounded(train)))
    return train_end, max(train_end, rounded(train + val))
