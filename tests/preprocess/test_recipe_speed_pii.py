# ruff: noqa: RUF001  (Chinese text is written with full-width punctuation)
"""PII detection looks only where a match can be, and finds what a scan of the whole text finds.

- The number patterns (resident IDs, cards, phones, IPv4) run over the numeric runs with enough
  digits: every match of a whole-text scan lies inside one run, which has at least the digits
  that pattern's threshold asks for; and detection over the runs equals detection with one run
  that is the whole text, on the labelled set, the PII tests' texts and random ones.
- The other detectors are skipped when the text lacks what their patterns need: "@" for e-mail,
  "://" for URL credentials, "+" for international numbers, the word for passports (case-folded:
  everything ``(?i:passport)`` matches folds to "passport"), two colons for IPv6 (scanned from the
  first pair on: the same matches).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest

from lmforge.preprocess import pii
from lmforge.preprocess.pii import detect
from tests.data.pii.evaluate import load

THRESHOLDS = {
    "_ID18": 17,
    "_ID15": 15,
    "_CARD": 13,
    "_MOBILE": 11,
    "_LANDLINE": 10,
    "_NANP": 10,
    "_INTL": 8,
    "_IPV4": 4,
}
SAMPLES = [
    "手机13812345678，邮箱a.b@example.com；身份证 110101199003074578",
    "call +1 (415) 555-2671 or 010-6552 9988 or (021) 6234 5678, card 6222 0212 3456 7890 128",
    "+86 138-1234-5678, 0086 13812345678, (+86) 138 1234 5678, Tel13812345678, SKU13812345678",
    "IP 192.168.1.10 and 2001:db8::1: then fe80::1%eth0, version 1.2.3.4, v1.2.3.4",
    "护照号码：G12345678，passport No. E12345678, PASSPORT 123456789, paſſport X1234567",
    "ftp://root:s3cret@files.example.com:2121/path and https://user:pa:ss@[::1]:8080",
    "order 58213 2026-11-18 15:30 ¥1,299.00 4111 1111 1111 1111 and 4111-1111-1111-1111",
    "1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 X x 12345678901234567X",
    "+33 1 23 45 67 89 +65 8760 6225 6258 +44 20 7946 0958 (+86)13812345678",
    "٣٣٣٣٣٣٣٣٣٣٣ ١٣٨١٢٣٤٥٦٧٨ 13812345678٣ ４１１１ 1111 1111 1111",
]


def _texts() -> list[str]:
    return [record["text"] for record in load()] + SAMPLES + _random_texts(7, 3000)


def _random_texts(seed: int, count: int) -> list[str]:
    rnd = random.Random(seed)
    pieces = [
        *"0123456789" * 6,
        *" -.()+:/@Xx,，：",
        "86",
        "0086",
        "138",
        "1",
        "010",
        "(+86)",
        "+1 ",
        "tel",
        "订单号",
        "手机",
        "护照",
        "passport ",
        "身份证",
        "IP",
        "v",
        "::",
        "db8",
        "user:pw@",
        "ftp://",
        "a",
        "中",
        "٣",
        "\n",
    ]
    return ["".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 45))) for _ in range(count)]


@pytest.mark.parametrize("name", THRESHOLDS)
def test_number_matches_lie_in_a_run_with_enough_digits(name: str) -> None:
    pattern: re.Pattern[str] = getattr(pii, name)
    for text in _texts():
        runs = list(pii._NUMERIC_RUN.finditer(text))
        for m in pattern.finditer(text):
            if sum(map(str.isdecimal, m[0])) < THRESHOLDS[name]:
                # Only these two match with fewer digits, and their finders yield nothing then
                # (test_what_the_international_and_card_finders_need).
                assert name in ("_INTL", "_CARD"), (name, text, m)
                continue
            run = next((r for r in runs if r.start() <= m.start() and m.end() <= r.end()), None)
            assert run is not None, (name, text, m)
            assert sum(map(str.isdecimal, run[0])) >= THRESHOLDS[name], (name, text, m)


def test_what_the_international_and_card_finders_need() -> None:
    for text in _texts():
        runs = [(0, len(text), 10**9)]
        for span in pii._find_phones(text, runs):
            if span.kind == "international":
                assert sum(map(str.isdecimal, span.value)) >= THRESHOLDS["_INTL"]
        for span in pii._find_bank_cards(text, runs):
            assert sum(map(str.isdecimal, span.value)) >= THRESHOLDS["_CARD"]


def _whole_text(text: str) -> list[tuple[int, int, int]]:
    return [(0, len(text), 10**9)]


def test_detection_over_the_runs_is_detection_over_the_whole_text(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = _texts()
    found = [detect(text) for text in texts]
    monkeypatch.setattr(pii, "_numeric_runs", _whole_text)
    assert [detect(text) for text in texts] == found


def test_every_detector_with_and_without_runs() -> None:
    for text in SAMPLES:
        for find in pii.DETECTORS.values():
            assert list(find(text, None)) == list(find(text, pii._numeric_runs(text)))


def test_the_literals_the_prefilters_look_for() -> None:
    assert "@" in pii._EMAIL.pattern.replace("(?<![A-Za-z0-9._%+-])", "")
    assert "://" in pii._URL_CREDENTIALS.pattern
    assert pii._INTL.pattern.startswith(r"(?<![0-9A-Za-z+])\+")
    assert pii._PASSPORT_KEYWORD.pattern == "护照|護照|(?i:passport)"
    assert "(?i:passport)" in pii._PASSPORT_LABELLED.pattern and "护照" in pii._PASSPORT_LABELLED.pattern


def test_what_passport_matches_case_insensitively_folds_to_it() -> None:
    for letter in set("passport"):
        for code in range(0x110000):
            if re.fullmatch(f"(?i:{letter})", chr(code)):
                assert chr(code).casefold() == letter, (letter, hex(code))


def _ipv6_from_hint(text: str) -> Iterator[re.Match[str]]:
    hint = pii._IPV6_HINT.search(text)
    return pii._IPV6.finditer(text, max(0, hint.start() - 4)) if hint else iter(())


def test_ipv6_scan_from_the_first_pair_of_colons() -> None:
    rnd = random.Random(11)
    alphabet = "0123456789abcdefABCDEFgx:.: :"
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40))) for _ in range(30000)]
    for text in texts + SAMPLES:
        assert [m.span() for m in _ipv6_from_hint(text)] == [m.span() for m in pii._IPV6.finditer(text)], text
