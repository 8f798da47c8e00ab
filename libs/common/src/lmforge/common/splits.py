"""A dataset version's split spec: the request body the gateway validates and preprocess applies.

One model for both (docs/curation.md, "Splits"): ``ratios`` of train, val and test, and ``by``
``hash`` or ``time``. ``SplitRatios.weights`` turns the ratios into the whole-number weights the
hash split and the time cuts use.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

MAX_RATIO = 1_000_000
# A split ratio: a number from 0 to 1,000,000 (JSON numbers only: no strings, no booleans).
Ratio = Annotated[float, Field(strict=True, ge=0, le=MAX_RATIO, allow_inf_nan=False)]
SplitBy = Literal["hash", "time"]


class SplitRatios(BaseModel):
    """How much of the version goes to each split, in proportion (``8, 1, 1`` or ``0.7, 0.2, 0.1``)."""

    model_config = ConfigDict(extra="forbid")

    train: Annotated[Ratio, Field(gt=0)] = Field(description="Above 0.")
    val: Ratio = Field(description="0 or more.")
    test: Ratio = Field(description="0 or more.")

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
