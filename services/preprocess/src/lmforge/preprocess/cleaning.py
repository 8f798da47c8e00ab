# ruff: noqa: RUF001, RUF002, RUF003  (full-width CJK punctuation is what this file is about)
"""Cleaning operators: mojibake repair, HTML to text, unicode normalisation, control characters,
whitespace; and the deterministic split.

Each operator is a pure function of the text, so the same record always cleans the same way. A
recipe (``recipe.py``) names which of them run, in which order and with which parameters.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Literal

import ftfy

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
    """
    return ftfy.fix_encoding(text)


def normalize_unicode(text: str, form: NormalForm = "NFKC", keep: str = KEPT_PUNCTUATION) -> str:
    """``form`` (NFKC by default), except for the characters in ``keep``: the full-width
    punctuation in ``KEPT_PUNCTUATION`` unless told otherwise."""
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
    chars = [
        chr(c) for r in planes for c in r if unicodedata.category(chr(c)) in ("Cc", "Cf", "Cs") and chr(c) not in kept
    ]
    return re.compile("[" + "".join(re.escape(c) if c.isascii() else c for c in chars) + "]+")


_CONTROL = _control_chars()


def remove_control_chars(text: str) -> str:
    """Control and invisible format characters removed: NUL, escape, zero-width spaces, byte order
    marks, soft hyphens, direction marks (tab and line breaks stay for the whitespace operator)."""
    return _CONTROL.sub("", text)


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace becomes one space; none at either end."""
    return WHITESPACE.sub(" ", text).strip()


def clean_text(text: str, masker: PiiMasker | None = None) -> CleanedText:
    """The default recipe's text operators (filters left out): the cleaned text, what was masked
    in it, and its sensitivity level. ``masker`` replaces the recipe's PII step where given."""
    from .recipe import default_pipeline  # the recipe module builds on the operators here

    return default_pipeline().transform(text, masker)


def split_for(record_id: str) -> Split:
    """The split a record is given when it is cleaned: ``sha256(record_id) % 10``, 8 train, 1 val,
    1 test. A dataset version cut with the default split spec (8:1:1 by hash) gives the same."""
    return split_by_hash(record_id, DEFAULT_RATIOS.weights())
