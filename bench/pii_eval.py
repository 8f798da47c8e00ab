"""Precision and recall of the PII detectors on the labelled set, per type, and how fast they run.

Span-level and exact: a detected span counts only if its type, start and end equal a labelled
span's (tests/data/pii/evaluate.py). The labelled set is tests/data/pii/labelled.jsonl, written
by tests/data/pii/generate.py.

    .venv/bin/python bench/pii_eval.py [--errors] [--seeds N]

``--seeds N`` also scores N more sets generated with other seeds (not committed; a check that the
figures do not depend on one draw of values). ``--errors`` lists every miss and false positive.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lmforge.preprocess.cleaning import clean_text
from tests.data.pii.evaluate import evaluate, load
from tests.data.pii.generate import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--errors", action="store_true", help="list every miss and false positive")
    parser.add_argument("--seeds", type=int, default=0, help="also score N sets generated with seeds 1..N")
    args = parser.parse_args()

    records = load()
    result = evaluate(records)
    spans = sum(len(r["spans"]) for r in records)
    negatives = sum(len(r["negatives"]) for r in records)
    print(f"labelled set: {len(records)} records, {spans} PII spans, {negatives} hard negatives\n")
    print(result.table())
    if args.errors:
        for text, span in result.misses:
            print(f"miss {span['type']}/{span['kind']}: {text[span['start'] : span['end']]!r} in {text!r}")
        for text, found in result.false_positives:
            print(f"false positive {found.type}/{found.kind}: {found.value!r} in {text!r}")

    if args.seeds:
        labelled = found_spans = detected = correct = 0
        for seed in range(1, args.seeds + 1):
            other = evaluate(build(seed))
            labelled += other.overall.labelled
            found_spans += other.overall.found
            detected += other.overall.detected
            correct += other.overall.correct
            if args.errors:
                for text, span in other.misses:
                    print(f"seed {seed} miss {span['type']}/{span['kind']}: {text[span['start'] : span['end']]!r}")
                for text, fp in other.false_positives:
                    print(f"seed {seed} false positive {fp.type}/{fp.kind}: {fp.value!r} in {text!r}")
        print(
            f"\nseeds 1..{args.seeds}: {labelled} labelled spans, recall {found_spans / labelled:.5f}, "
            f"precision {correct / detected:.5f} ({labelled - found_spans} missed, {detected - correct} false)"
        )

    texts = [r["text"] for r in records]
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 3:
        for text in texts:
            clean_text(text)
        n += len(texts)
    elapsed = time.perf_counter() - start
    print(f"\nclean_text (normalise + detect + mask): {n / elapsed:,.0f} records/s on one core")


if __name__ == "__main__":
    main()
