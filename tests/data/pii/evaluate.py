"""Span-level precision and recall of the PII detectors on ``labelled.jsonl``.

A detected span counts only if its type, start and end all equal a labelled span's. The text is
normalised first, as the cleaning pipeline does (``normalize_unicode``; the labelled texts keep
their length under it). Used by ``tests/preprocess/test_pii.py`` and ``bench/pii_eval.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.preprocess.cleaning import normalize_unicode
from lmforge.preprocess.pii import PiiSpan, detect

LABELLED = Path(__file__).with_name("labelled.jsonl")

# (type, kind): kind None is the whole type.
ROWS: list[tuple[str, str | None]] = [
    ("id_card", None),
    ("id_card", "18"),
    ("id_card", "15"),
    ("bank_card", None),
    ("passport", None),
    ("phone", None),
    ("phone", "mobile"),
    ("phone", "landline"),
    ("phone", "international"),
    ("phone", "north_american"),
    ("email", None),
    ("ip", None),
    ("ip", "v4"),
    ("ip", "v6"),
    ("url_credentials", None),
]


def row_name(pii_type: str, kind: str | None) -> str:
    return pii_type if kind is None else f"{pii_type}: {kind}"


@dataclass
class Score:
    labelled: int = 0
    found: int = 0  # labelled spans detected exactly
    detected: int = 0
    correct: int = 0  # detected spans that are labelled exactly

    @property
    def recall(self) -> float:
        return self.found / self.labelled if self.labelled else 1.0

    @property
    def precision(self) -> float:
        return self.correct / self.detected if self.detected else 1.0


@dataclass
class Evaluation:
    rows: dict[str, Score]
    overall: Score
    negatives: dict[str, tuple[int, int]]  # category -> (how many, how many touched by a detection)
    misses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (text, labelled span)
    false_positives: list[tuple[str, PiiSpan]] = field(default_factory=list)

    def table(self) -> str:
        lines = ["| type | labelled spans | detected | recall | precision |", "|---|---|---|---|---|"]
        for name, s in [*self.rows.items(), ("**overall**", self.overall)]:
            lines.append(f"| {name} | {s.labelled} | {s.detected} | {s.recall:.3f} | {s.precision:.3f} |")
        lines += ["", "| hard negative | count | masked |", "|---|---|---|"]
        for category, (count, touched) in sorted(self.negatives.items()):
            lines.append(f"| {category} | {count} | {touched} |")
        return "\n".join(lines)


def load(path: Path = LABELLED) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate(records: Iterable[dict[str, Any]], find: Callable[[str], list[PiiSpan]] = detect) -> Evaluation:
    rows = {row_name(t, k): Score() for t, k in ROWS}
    overall = Score()
    negatives: Counter[str] = Counter()
    touched: Counter[str] = Counter()
    result = Evaluation(rows, overall, {})
    for record in records:
        text = normalize_unicode(record["text"])
        assert len(text) == len(record["text"]), "labelled texts keep their length under normalisation"
        spans = find(text)
        gold = {(s["type"], s["start"], s["end"]) for s in record["spans"]}
        predicted = {(str(s.type), s.start, s.end) for s in spans}
        for s in record["spans"]:
            hit = (s["type"], s["start"], s["end"]) in predicted
            for score in (rows[s["type"]], rows.get(row_name(s["type"], s["kind"])), overall):
                if score is not None:
                    score.labelled += 1
                    score.found += hit
            if not hit:
                result.misses.append((text, s))
        for p in spans:
            hit = (str(p.type), p.start, p.end) in gold
            for score in (rows[str(p.type)], rows.get(row_name(str(p.type), p.kind)), overall):
                if score is not None:
                    score.detected += 1
                    score.correct += hit
            if not hit:
                result.false_positives.append((text, p))
        for n in record["negatives"]:
            negatives[n["category"]] += 1
            touched[n["category"]] += any(p.start < n["end"] and n["start"] < p.end for p in spans)
    result.negatives = {c: (negatives[c], touched[c]) for c in negatives}
    return result
