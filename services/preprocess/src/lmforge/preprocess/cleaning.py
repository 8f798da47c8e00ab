# ruff: noqa: RUF001, RUF002, RUF003  (full-width CJK punctuation is what this file is about)
"""Cleaning operators: mojibake repair, HTML to text, unicode normalisation, control characters,
whitespace; and the deterministic split.

Each operator is a pure function of the text, so the same record always cleans the same way. A
recipe (``recipe.py``) names which of them run, in which order and with which parameters.
"""

from __future__ import annotations

import html
import importlib
import re
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Literal

import ftfy
from ftfy.badness import BADNESS_RE, is_bad

from lmforge.common.events import Split
from lmforge.common.splits import DEFAULT_RATIOS

from .pii import PiiMasker, Sensitivity
from .splits import split_by_hash

# NFKC folds these to ASCII (，to ,); Chinese prose uses them as its punctuation, so they stay.
# Everything else is folded: full-width letters, digits, ＠ and － become ASCII, which PII detection needs.
KEPT_PUNCTUATION = "，：；！？（）～…"

NormalForm = Literal["NFC", "NFKC"]
WHITESPACE = re.compile(r"\s+")
_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "section"}


def _char_class(codes: list[int]) -> str:
    """A regex class of these code points (ascending), written as ranges: a class that lists
    thousands of characters one by one is checked item by item at every position (about seven
    times slower than the ranges, which hold the same characters)."""
    ranges, start = [], 0
    for i, code in enumerate(codes):
        if i + 1 == len(codes) or codes[i + 1] != code + 1:
            first, last = re.escape(chr(codes[start])), re.escape(chr(code))
            ranges.append(first if codes[start] == code else f"{first}-{last}")
            start = i + 1
    return "[" + "".join(ranges) + "]"


@dataclass(frozen=True, slots=True)
class CleanedText:
    text: str
    masked: dict[str, int]  # how many entities of each PII type were masked
    sensitivity: Sensitivity


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    if "<" not in text and "&" not in text:
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return html.unescape("".join(parser.parts))


def fix_mojibake(text: str) -> str:
    """Text that was UTF-8 decoded as Latin-1 or Windows-1252 (``æ‚¨å¥½`` for ``您好``), decoded again.

    Only ftfy's encoding steps (``ftfy.fix_encoding``): no quote uncurling, no width folding (it
    would turn ``，`` into ``,``), no normalisation; the other operators do those as a recipe says.

    ftfy returns a text unchanged when it is ASCII or shows no sign of mojibake (``is_bad``, the
    first thing each of its passes checks), so those texts skip its other steps; and ``is_bad``
    finds nothing in a text with none of the characters its pattern needs (``_MOJIBAKE_CHARS``).
    """
    if text.isascii() or (_MOJIBAKE_CHARS is not None and not _MOJIBAKE_CHARS.search(text)) or not is_bad(text):
        return text
    return ftfy.fix_encoding(text)


def _mojibake_chars() -> re.Pattern[str] | None:
    """Characters one of which every match of ftfy's ``BADNESS_RE`` contains, read from the pattern
    itself: each of its alternatives has a character (a literal or a class) that can only be
    non-ASCII (``Ã``, ``[€£¥]``, ...); the class of all of those. About 420 characters, none of
    them a CJK character or CJK punctuation, so Chinese text rarely holds one. None (no shortcut)
    if the pattern is not an alternation of such sequences."""
    try:
        parser: Any = importlib.import_module("re._parser")
        if BADNESS_RE.flags & re.IGNORECASE:
            return None
        ((op, (_, branches)),) = parser.parse(BADNESS_RE.pattern, BADNESS_RE.flags).data
        if op is not parser.BRANCH:
            return None
        codes: set[int] = set()
        for branch in branches:
            for op, value in branch.data:  # each LITERAL or IN item of a sequence is one character
                chars: set[int] | None = None
                if op is parser.LITERAL:
                    chars = {value}
                elif op is parser.IN:
                    chars = set()
                    for kind, arg in value:
                        if kind is parser.LITERAL:
                            chars.add(arg)
                        elif kind is parser.RANGE:
                            chars.update(range(arg[0], arg[1] + 1))
                        else:  # a category or a negated class
                            chars = None
                            break
                if chars and min(chars) >= 0x80:
                    codes |= chars
                    break
            else:
                return None  # an alternative without such a character: no shortcut
    except (ImportError, AttributeError, TypeError, ValueError):  # another Python's parser: no shortcut
        return None
    return re.compile(_char_class(sorted(codes)))


_MOJIBAKE_CHARS = _mojibake_chars()


def normalize_unicode(text: str, form: NormalForm = "NFKC", keep: str = KEPT_PUNCTUATION) -> str:
    """``form`` (NFKC by default), except for the characters in ``keep``: the full-width
    punctuation in ``KEPT_PUNCTUATION`` unless told otherwise."""
    if text.isascii():  # no ASCII character has a decomposition: NFC and NFKC leave it as it is
        return text
    if not keep:
        return unicodedata.normalize(form, text)
    kept = _kept_pattern(keep)
    if not kept.search(text):
        return unicodedata.normalize(form, text)
    parts = kept.split(text)  # odd indexes are the kept characters
    return "".join(p if i % 2 else unicodedata.normalize(form, p) for i, p in enumerate(parts))


def _kept_pattern(keep: str) -> re.Pattern[str]:
    pattern = _KEPT_PATTERNS.get(keep)
    if pattern is None:
        pattern = _KEPT_PATTERNS[keep] = re.compile(f"([{re.escape(keep)}])")
    return pattern


_KEPT_PATTERNS: dict[str, re.Pattern[str]] = {}


def _control_chars() -> re.Pattern[str]:
    """Controls (Cc) but tab, line feed and carriage return; format characters (Cf) but the
    zero-width non-joiner and joiner, which carry meaning (Persian and Indic spelling, emoji
    sequences); lone surrogates (Cs), which cannot be written as UTF-8."""
    kept = {"\t", "\n", "\r", "\u200c", "\u200d"}
    planes = (range(0x20000), range(0xE0000, 0xE0080))  # every Cc, Cf and Cs is in these
    codes = [c for r in planes for c in r if unicodedata.category(chr(c)) in ("Cc", "Cf", "Cs") and chr(c) not in kept]
    return re.compile(_char_class(codes) + "+")


_CONTROL = _control_chars()
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+")  # _CONTROL's ASCII characters


def remove_control_chars(text: str) -> str:
    """Control and invisible format characters removed: NUL, escape, zero-width spaces, byte order
    marks, soft hyphens, direction marks (tab and line breaks stay for the whitespace operator)."""
    return (_ASCII_CONTROL if text.isascii() else _CONTROL).sub("", text)


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace becomes one space; none at either end. (``str.split`` splits where
    ``\\s`` matches: both are ``str.isspace``.)"""
    return " ".join(text.split())


def clean_text(text: str, masker: PiiMasker | None = None) -> CleanedText:
    """The default recipe's text operators (filters left out): the cleaned text, what was masked
    in it, and its sensitivity level. ``masker`` replaces the recipe's PII step where given."""
    from .recipe import default_pipeline  # the recipe module builds on the operators here

    return default_pipeline().transform(text, masker)


_DEFAULT_WEIGHTS = DEFAULT_RATIOS.weights()


def split_for(record_id: str) -> Split:
    """The split a record is given when it is cleaned: ``sha256(record_id) % 10``, 8 train, 1 val,
    1 test. A dataset version cut with the default split spec (8:1:1 by hash) gives the same."""
    return split_by_hash(record_id, _DEFAULT_WEIGHTS)
