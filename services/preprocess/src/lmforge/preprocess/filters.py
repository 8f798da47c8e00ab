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
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Verdict:
    """``keep`` or not; ``measured`` is what the filter measured, ``threshold`` the bound it was
    held to (for a range, the bound it broke, or the lower one when it kept the text)."""

    keep: bool
    measured: float
    threshold: float


# CJK ideographs (unified, extensions, compatibility) and kana: each counts as one token.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_TOKEN = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def tokens(text: str) -> list[str]:
    """A tokenization that needs no model: each CJK character is a token, and so is each run of
    other characters between whitespace and CJK characters (``退款 order 58213，thanks`` is
    ``退 款 order 58213，thanks``). It is what the token filters count, not any model's tokens."""
    return text.split() if text.isascii() else _TOKEN.findall(text)  # no CJK: runs between whitespace


# The last text's tokens and character counts: a recipe's filters measure the same text one after
# the other (token_length then repeated_ngrams, symbol_ratio then digit_ratio), so each is worked
# out once. Keyed by the text object itself; a text object is immutable, so what is kept for it
# stays true.
_last_tokens: tuple[str, list[str]] = ("", [])
_last_counts: tuple[str, tuple[int, int, int]] = ("", (0, 0, 0))


def _tokens(text: str) -> list[str]:
    """``tokens(text)``, shared by the filters (which do not change the list)."""
    global _last_tokens
    last, toks = _last_tokens
    if last is not text:
        toks = tokens(text)
        _last_tokens = (text, toks)
    return toks


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
    return _within(len(_tokens(text)), low, high)


def _is_symbol(c: str) -> bool:
    return unicodedata.category(c)[0] in "PS"


class _CharSet:
    """The characters for which a predicate holds, counted in a text without a Python loop per
    character. Every whitespace character, punctuation mark, symbol and decimal digit Unicode has
    is below U+20000 (tests/preprocess/test_recipe_speed_filters.py checks every code point)."""

    def __init__(self, chars: frozenset[str]) -> None:
        self.chars = chars
        self._ascii = "".join(sorted(c for c in chars if c.isascii())).encode("ascii")
        self._contains = chars.__contains__

    def count(self, text: str) -> int:
        if text.isascii():  # bytes.translate deletes the ASCII members at C speed
            return len(text) - len(text.encode("ascii").translate(None, self._ascii))
        return sum(map(self._contains, text))


def _char_sets() -> tuple[_CharSet, _CharSet, _CharSet, _CharSet]:
    space, symbol, digit = [], [], []
    for code in range(0x20000):
        c = chr(code)
        if c.isspace():
            space.append(c)
        elif _is_symbol(c):
            symbol.append(c)
        if c.isdecimal():
            digit.append(c)
    return (
        _CharSet(frozenset(space)),
        _CharSet(frozenset(symbol)),
        _CharSet(frozenset(digit)),
        _CharSet(frozenset(space + symbol)),
    )


_SPACE, _SYMBOL, _DIGIT, _SPACE_OR_SYMBOL = _char_sets()


# Each code point's class, for counting all three in one pass over a text that is not ASCII:
# 1 whitespace, 2 punctuation or symbol, 3 decimal digit (no character is two of these), 0 other;
# the last entry stands for everything from U+20000 on.
def _class_table() -> np.ndarray:
    table = np.zeros(0x20001, dtype=np.uint8)
    for kind, chars in enumerate((_SPACE, _SYMBOL, _DIGIT), start=1):
        table[[ord(c) for c in chars.chars]] = kind
    return table


_CLASS = _class_table()


def _counts(text: str) -> tuple[int, int, int]:
    """Whitespace, punctuation-or-symbol and decimal-digit characters in the text (kept for the
    last text: the two ratio filters run one after the other)."""
    global _last_counts
    last, counts = _last_counts
    if last is not text:
        if text.isascii():
            counts = (_SPACE.count(text), _SYMBOL.count(text), _DIGIT.count(text))
        else:
            codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
            found = np.bincount(_CLASS[np.minimum(codes, 0x20000)], minlength=4)
            counts = (int(found[1]), int(found[2]), int(found[3]))
        _last_counts = (text, counts)
    return counts


def _ratio(text: str, counted: int) -> float:
    """Characters of class ``counted`` (``_counts``' index) among those that are not whitespace."""
    counts = _counts(text)
    chars = len(text) - counts[0]
    return round(counts[counted] / chars, 6) if chars else 0.0


def symbol_ratio(text: str, limit: float) -> Verdict:
    """The share of punctuation and symbols (Unicode categories P* and S*) among the characters
    that are not whitespace, at most ``limit``."""
    measured = _ratio(text, 1)
    return Verdict(measured <= limit, measured, limit)


def digit_ratio(text: str, limit: float) -> Verdict:
    """The share of decimal digits among the characters that are not whitespace, at most ``limit``."""
    measured = _ratio(text, 2)
    return Verdict(measured <= limit, measured, limit)


def repeated_ngrams(text: str, n: int, limit: float) -> Verdict:
    """The share of token n-grams that repeat an earlier one (1 - distinct / all), at most ``limit``.

    A text with fewer than ``n`` tokens repeats nothing (0). Spam and boilerplate repeat the same
    phrase; a business text rarely repeats a whole phrase of ``n`` tokens.
    """
    toks = _tokens(text)
    grams = len(toks) - n + 1
    distinct = len(set(zip(*(toks[i:] for i in range(n)), strict=False))) if grams > 0 else 0
    measured = round(1 - distinct / grams, 6) if grams > 0 else 0.0
    return Verdict(measured <= limit, measured, limit)


def blocklist(text: str, patterns: Sequence[re.Pattern[str]]) -> Verdict:
    """How many of the patterns match the text; any match drops it (threshold 0)."""
    measured = sum(1 for p in patterns if p.search(text))
    return Verdict(measured == 0, measured, 0)


# Identifiers and numbers (order numbers, hex ids, amounts) say nothing about the language, and
# the model reads them as letters of some language: words with a digit are left out, and so are
# e-mail addresses and URLs. A word ends at whitespace or a CJK character (Chinese has no spaces).
_WORD = f"[^\\s{_CJK}]"
# A match always takes a whole word (from its start, the greedy runs reach its end), so it is
# tried at a word's start only: the same matches, without a quadratic scan of every position.
_NOT_LANGUAGE = re.compile(f"(?<!{_WORD})(?:{_WORD}*\\d{_WORD}*|{_WORD}+@{_WORD}+|{_WORD}+://{_WORD}+)")
_NOT_LANGUAGE_ASCII = re.compile(r"(?<!\S)(?:\S*\d\S*|\S+@\S+|\S+://\S+)")  # the same on ASCII text (no CJK)


def language(
    text: str, allowed: Collection[str], min_probability: float, min_chars: int, *, exact: bool = True
) -> Verdict:
    """The probability that the text is in one of the ``allowed`` languages (ISO 639-1 codes),
    at least ``min_probability``.

    py3langid (its model ships in the package) classifies the words of the text: words that hold
    a digit, e-mail addresses and URLs are left out, since identifiers and numbers belong to no
    language. Chinese business text mixes in English words and product names, and a model asked
    about the whole mixture answers badly (Latin, at certainty 1). So the CJK characters and the
    rest are classified apart, and the measure is each part's probability of an allowed language,
    weighted by its characters. With fewer than ``min_chars`` characters left there is too little
    to judge: the text is kept, measured as 1.

    ``exact=False`` (what a recipe runs) stops measuring once the text is certainly kept: when the
    parts known to be in an allowed language (py3langid gives them 1.0) already make up
    ``min_probability`` of the characters, the rest is not classified, and ``measured`` is that
    share, a lower bound of the measure. The decision is the same, and so is a dropped text's
    measure, which is always the exact one.
    """
    words = (_NOT_LANGUAGE_ASCII if text.isascii() else _NOT_LANGUAGE).sub(" ", text)
    if words.isascii():
        parts = ["", words]
    else:  # the CJK characters, and the rest with a space for each CJK character
        parts = ["".join(_CJK_RUN.findall(words)), _CJK_RUN.sub(lambda m: " " * len(m[0]), words)]
    sizes = [len(part) - _SPACE_OR_SYMBOL.count(part) for part in parts]
    if sum(sizes) < min_chars:
        return Verdict(True, 1.0, min_probability)
    model = _language_model()
    total = sum(sizes)
    pending: list[tuple[int, np.ndarray, float | None]] = []  # size, automaton states, shortcut's answer
    certain_mass = 0.0
    for part, size in zip(parts, sizes, strict=True):
        if not size:
            continue
        visited = model.states(part)
        answer = model.shortcut(visited, allowed)
        if not exact and answer == 1.0:
            certain_mass += size
            share = round(certain_mass / total, 6)
            if share >= min_probability:  # the measure is at least this share: kept
                return Verdict(True, share, min_probability)
        pending.append((size, visited, answer))
    mass = 0.0
    for size, visited, answer in pending:  # the parts in order, as the measure has always added them
        mass += size * (answer if answer is not None else model.exact(visited, allowed))
    measured = round(mass / total, 6)
    return Verdict(measured >= min_probability, measured, min_probability)


def known_languages() -> frozenset[str]:
    """The codes the language model knows (a recipe's allowed languages must be among them)."""
    return frozenset(_identifier().nb_classes)


@cache
def _identifier() -> Any:
    """The model is loaded once per process, on first use (about 0.2 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)


@cache
def _language_model() -> _LanguageModel:
    return _LanguageModel(_identifier())


_UNIT = 2.0**-24  # float32's unit roundoff: py3langid computes in float32


class _LanguageModel:
    """py3langid's ``rank``, read only for the languages asked about, with a shortcut where the
    answer is certain; the answer is the same float either way.

    ``rank`` counts the model's byte n-gram features in the text (``instance2fv``: its tokenizer,
    a finite automaton that emits the features ending at each byte), multiplies the counts by the
    model's matrix (float32, 7,480 features by 97 languages, about 60 µs) and normalises the 97
    scores into probabilities (97 × 97 exponentials), then sorts them. Here the text goes through
    the same automaton, and:

    - the scores are first estimated from the automaton's states (each state's features' rows
      added up once, beforehand; a text's states summed by BLAS), with a bound on how far the
      estimate and py3langid's float32 scores can be apart. When the top language leads every
      other by more than 30 (natural log) plus that bound, float32 gives that language a
      probability of exactly 1.0 (the other exponentials add up to less than 1e-11, under half a
      unit in the last place of 1.0), and the measure is 1.0 if it is allowed; when every allowed
      language trails the top one by more than 100 plus that bound, their exponentials overflow
      and float32 gives each exactly 0.0.
    - otherwise the scores are computed as ``rank`` computes them (the same count vector, the same
      ``np.dot``), and normalised for the allowed languages' rows only: the same elementwise
      float32 operations on the same values as in the 97 × 97 matrix.

    tests/preprocess/test_recipe_speed_filters.py checks the answers against ``rank``'s.
    """

    def __init__(self, identifier: Any) -> None:
        self.identifier = identifier
        self.index = {lang: i for i, lang in enumerate(identifier.nb_classes)}
        self.features = int(identifier.nb_numfeats)
        if identifier.tk_nextmove.itemsize != 2:
            raise ValueError("py3langid's automaton is not the one this reads (uint16 states)")
        self._nextmove_array = np.frombuffer(identifier.tk_nextmove, dtype=np.uint16)  # the model's own, 4.6 MB
        start = [byte for byte in (0xFF, *range(256)) if identifier.tk_nextmove[byte] == 0]
        if not start:
            raise ValueError("py3langid's automaton has no byte that leaves it at its start")
        self._padding = bytes([start[0]]) * 3
        states = len(identifier.tk_nextmove) >> 8
        outputs: list[tuple[int, ...]] = [()] * states
        for state, found in identifier.tk_output.items():
            outputs[state] = tuple(found)
        self._outputs = outputs
        ptc = np.asarray(identifier.nb_ptc, dtype=np.float64)
        languages = ptc.shape[1]
        pairs = [(state, feature) for state, found in enumerate(outputs) for feature in found]
        by_state, feature = (np.array(column, dtype=np.intp) for column in zip(*pairs, strict=True))
        # Per state: the rows of its features added up, the sum of their largest magnitudes, and
        # how many there are (one gather and one sum give all three for a text). In float32, as
        # the model's own numbers: half the memory to read, and its rounding is in the bound below.
        table = np.zeros((states, languages + 2))
        np.add.at(table[:, :languages], by_state, ptc[feature])
        np.add.at(table[:, languages], by_state, np.abs(ptc).max(axis=1)[feature])
        np.add.at(table[:, languages + 1], by_state, 1.0)
        self._state_table = table.astype(np.float32)
        self._ones = np.ones(65_536, dtype=np.float32)
        self._languages = languages
        self._prior = np.asarray(identifier.nb_pc, dtype=np.float64)
        self._prior_bound = float(np.abs(self._prior).max())

    def states(self, text: str) -> np.ndarray:
        """The automaton's state after each byte of the text's UTF-8: the states ``instance2fv``'s
        scan goes through. Its patterns are byte n-grams of at most 4 bytes, so the state after a
        byte is the one the automaton reaches from its start on the last 4 bytes (the longest of
        their suffixes that begins a pattern): four vectorised steps instead of a loop. The text
        is read after three bytes that leave the automaton at its start (0xFF, which begins no
        pattern), so the first bytes have their 4 too."""
        data = self._padding + text.encode("utf8", errors="surrogatepass")
        n = len(data) - 3
        table = self._nextmove_array
        x = np.frombuffer(data, dtype=np.uint8)
        after = table[x[:n]]
        for k in (1, 2, 3):
            index = np.left_shift(after, 8, dtype=np.intp)
            index += x[k : n + k]
            after = table[index]
        return after

    def counts(self, states: np.ndarray) -> np.ndarray:
        """``instance2fv``'s vector: how often each feature occurs (uint16, as it counts)."""
        outputs = self._outputs
        found = [feature for state in states.tolist() for feature in outputs[state]]
        return np.bincount(np.asarray(found, dtype=np.intp), minlength=self.features).astype(np.uint16)

    def allowed_probability(self, text: str, allowed: Collection[str]) -> float:
        """``min(1, sum of rank(text)'s probabilities of the allowed languages)``, the same float."""
        states = self.states(text)
        certain = self.shortcut(states, allowed)
        return certain if certain is not None else self.exact(states, allowed)

    def shortcut(self, states: np.ndarray, allowed: Collection[str]) -> float | None:
        """``allowed_probability`` where it is certain without py3langid's product; else None."""
        if len(states) >= 65_536:  # only then could a feature occur more often than uint16 counts
            return None
        return self._certain(states, [self.index.get(lang) for lang in allowed])

    def exact(self, states: np.ndarray, allowed: Collection[str]) -> float:
        """``allowed_probability`` computed as py3langid's ``rank`` computes it."""
        positions = [self.index.get(lang) for lang in allowed]
        scores = self.identifier.nb_classprobs(self.counts(states))  # np.dot(counts, nb_ptc) + nb_pc
        rows = [p for p in positions if p is not None]
        with np.errstate(over="ignore"):
            probs = 1 / np.exp(scores[None, :] - scores[rows][:, None]).sum(1)
        by_row = dict(zip(rows, map(float, probs), strict=True))
        return min(1.0, sum(0.0 if p is None else by_row[p] for p in positions))

    def _certain(self, states: np.ndarray, positions: list[int | None]) -> float | None:
        """1.0 or 0.0 where float32 is bound to give it; None where it is not certain."""
        n = len(states)  # under 65,536 (shortcut)
        summed = (self._ones[:n] @ self._state_table.take(states, axis=0)).astype(np.float64)  # BLAS sgemv
        scores = summed[: self._languages] + self._prior
        # A float32 sum's error is at most (terms + 1) units of roundoff times the sum of the terms'
        # magnitudes, in any order of summation. py3langid's scores: its features' terms, then the
        # prior. These: the states' rows (each rounded once to float32), summed in float32. So
        # each score here is within (features + states + 2) units times that magnitude of
        # py3langid's, and a difference of two within twice that; the margin is twice that again.
        magnitude = float(summed[self._languages]) + self._prior_bound
        error = 4 * (float(summed[self._languages + 1]) + n + 130) * _UNIT * magnitude * 1.01 + 1e-6
        top = int(scores.argmax())
        best = scores[top]
        if top in positions:
            scores[top] = -np.inf
            return 1.0 if float(scores.max() - best) < -(30 + error) else None
        if all(p is None or float(best - scores[p]) > 100 + error for p in positions):
            return min(1.0, sum(0.0 for _ in positions))
        return None
