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
from collections.abc import Callable

from lmforge.common.events import Split
from lmforge.common.splits import SplitRatios
from lmforge.common.splits import SplitSpec as CommonSplitSpec

__all__ = ["Assigner", "SplitRatios", "SplitSpec", "split_by_hash", "time_cuts"]

# Assigns a split from a record's position in id order (0 = oldest) and its record id.
Assigner = Callable[[int, str], Split]


class SplitSpec(CommonSplitSpec):
    """The common split spec, with how preprocess applies it to a stream of records."""

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
