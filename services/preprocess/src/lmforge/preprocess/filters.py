# ruff: noqa: RUF002  (examples of Chinese text, written with full-width punctuation)
"""Filter operators: each measures one thing about a text and keeps or drops it against a threshold.

Every filter is a pure function returning a ``Verdict``: keep or drop, the value it measured, and
the threshold it held that value to. A dropped record keeps both (``dropped_records``), so a
threshold can be judged from the records it dropped. A recipe (``recipe.py``) chooses the filters
and their thresholds.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True, slots=True)
class Verdict:
    """``keep`` or not; ``measured`` is what the filter measured, ``threshold`` the bound it was
    held to (for a range, the bound it broke, or the lower one when it kept the text)."""

    keep: bool
    measured: float
    threshold: float


# CJK ideographs (unified, extensions, compatibility) and kana: each counts as one token.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_TOKEN = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def tokens(text: str) -> list[str]:
    """A tokenization that needs no model: each CJK character is a token, and so is each run of
    other characters between whitespace and CJK characters (``退款 order 58213，thanks`` is
    ``退 款 order 58213，thanks``). It is what the token filters count, not any model's tokens."""
    return _TOKEN.findall(text)


def _within(measured: float, low: float, high: float | None) -> Verdict:
    if measured < low:
        return Verdict(False, measured, low)
    if high is not None and measured > high:
        return Verdict(False, measured, high)
    return Verdict(True, measured, low)


def char_length(text: str, low: int = 1, high: int | None = None) -> Verdict:
    """Characters in the text, within ``[low, high]``."""
    return _within(len(text), low, high)


def token_length(text: str, low: int = 1, high: int | None = None) -> Verdict:
    """Tokens (``tokens``) in the text, within ``[low, high]``."""
    return _within(len(tokens(text)), low, high)


def _ratio(text: str, counted: Any) -> float:
    chars = [c for c in text if not c.isspace()]
    return round(sum(1 for c in chars if counted(c)) / len(chars), 6) if chars else 0.0


def _is_symbol(c: str) -> bool:
    return unicodedata.category(c)[0] in "PS"


def symbol_ratio(text: str, limit: float) -> Verdict:
    """The share of punctuation and symbols (Unicode categories P* and S*) among the characters
    that are not whitespace, at most ``limit``."""
    measured = _ratio(text, _is_symbol)
    return Verdict(measured <= limit, measured, limit)


def digit_ratio(text: str, limit: float) -> Verdict:
    """The share of decimal digits among the characters that are not whitespace, at most ``limit``."""
    measured = _ratio(text, str.isdecimal)
    return Verdict(measured <= limit, measured, limit)


def repeated_ngrams(text: str, n: int, limit: float) -> Verdict:
    """The share of token n-grams that repeat an earlier one (1 - distinct / all), at most ``limit``.

    A text with fewer than ``n`` tokens repeats nothing (0). Spam and boilerplate repeat the same
    phrase; a business text rarely repeats a whole phrase of ``n`` tokens.
    """
    toks = tokens(text)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    measured = round(1 - len(Counter(grams)) / len(grams), 6) if grams else 0.0
    return Verdict(measured <= limit, measured, limit)


def blocklist(text: str, patterns: Sequence[re.Pattern[str]]) -> Verdict:
    """How many of the patterns match the text; any match drops it (threshold 0)."""
    measured = sum(1 for p in patterns if p.search(text))
    return Verdict(measured == 0, measured, 0)


# Identifiers and numbers (order numbers, hex ids, amounts) say nothing about the language, and
# the model reads them as letters of some language: words with a digit are left out, and so are
# e-mail addresses and URLs. A word ends at whitespace or a CJK character (Chinese has no spaces).
_WORD = f"[^\\s{_CJK}]"
_NOT_LANGUAGE = re.compile(f"{_WORD}*\\d{_WORD}*|{_WORD}+@{_WORD}+|{_WORD}+://{_WORD}+")


def language(text: str, allowed: Collection[str], min_probability: float, min_chars: int) -> Verdict:
    """The probability that the text is in one of the ``allowed`` languages (ISO 639-1 codes),
    at least ``min_probability``.

    py3langid (its model ships in the package) classifies the words of the text: words that hold
    a digit, e-mail addresses and URLs are left out, since identifiers and numbers belong to no
    language. Chinese business text mixes in English words and product names, and a model asked
    about the whole mixture answers badly (Latin, at certainty 1). So the CJK characters and the
    rest are classified apart, and the measure is each part's probability of an allowed language,
    weighted by its characters. With fewer than ``min_chars`` characters left there is too little
    to judge: the text is kept, measured as 1.
    """
    words = _NOT_LANGUAGE.sub(" ", text)
    parts = ["".join(_CJK_CHAR.findall(words)), _CJK_CHAR.sub(" ", words)]
    sizes = [sum(1 for c in part if not c.isspace() and not _is_symbol(c)) for part in parts]
    if sum(sizes) < min_chars:
        return Verdict(True, 1.0, min_probability)
    identifier = _identifier()
    mass = 0.0
    for part, size in zip(parts, sizes, strict=True):
        if size:
            ranked = dict(identifier.rank(part))
            mass += size * min(1.0, sum(ranked.get(lang, 0.0) for lang in allowed))
    measured = round(mass / sum(sizes), 6)
    return Verdict(measured >= min_probability, measured, min_probability)


def known_languages() -> frozenset[str]:
    """The codes the language model knows (a recipe's allowed languages must be among them)."""
    return frozenset(_identifier().nb_classes)


@cache
def _identifier() -> Any:
    """The model is loaded once per process, on first use (about 0.2 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)
