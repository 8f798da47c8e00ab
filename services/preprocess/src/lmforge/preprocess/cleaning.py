# ruff: noqa: RUF001, RUF003  (full-width CJK punctuation is what this file is about)
"""The cleaning pipeline: HTML to text, unicode normalisation, whitespace, PII masking, a deterministic split.

Every step is a pure function of the text (or the record id), so the same record always cleans
the same way; ``PIPELINE_CONFIG`` names the steps and its hash goes into each dataset manifest.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser

from lmforge.common.events import Split

from .pii import DEFAULT_MODES, PiiMasker, PiiType, Sensitivity

# NFKC folds these to ASCII (，to ,); Chinese prose uses them as its punctuation, so they stay.
# Everything else is folded: full-width letters, digits, ＠ and － become ASCII, which PII detection needs.
KEPT_PUNCTUATION = "，：；！？（）～…"
_KEPT = re.compile(f"([{re.escape(KEPT_PUNCTUATION)}])")

PIPELINE_CONFIG = {
    "version": 2,
    "steps": ["strip_html", "normalize_unicode", "collapse_whitespace", "mask_pii"],
    "normalize_unicode": {"form": "NFKC", "kept": KEPT_PUNCTUATION},
    "mask_pii": {"types": [t.value for t in PiiType], "modes": {t.value: m.value for t, m in DEFAULT_MODES.items()}},
    "split": {"train": 8, "val": 1, "test": 1, "by": "sha256(record_id) % 10"},
    "dedup": "exact, sha256 of cleaned text",
}
CONFIG_HASH = hashlib.sha256(json.dumps(PIPELINE_CONFIG, sort_keys=True).encode()).hexdigest()[:16]

WHITESPACE = re.compile(r"\s+")
_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "section"}
DEFAULT_MASKER = PiiMasker()


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


def normalize_unicode(text: str) -> str:
    """NFKC, except for the full-width punctuation in ``KEPT_PUNCTUATION``."""
    if not _KEPT.search(text):
        return unicodedata.normalize("NFKC", text)
    parts = _KEPT.split(text)  # odd indexes are the kept characters
    return "".join(p if i % 2 else unicodedata.normalize("NFKC", p) for i, p in enumerate(parts))


def clean_text(text: str, masker: PiiMasker = DEFAULT_MASKER) -> CleanedText:
    """The cleaned text, what was masked in it, and its sensitivity level."""
    out = WHITESPACE.sub(" ", normalize_unicode(strip_html(text))).strip()
    masked = masker.mask(out)
    return CleanedText(masked.text, masked.counts, masked.sensitivity)


def split_for(record_id: str) -> Split:
    bucket = int(hashlib.sha256(record_id.encode()).hexdigest(), 16) % 10
    return Split.TRAIN if bucket < 8 else Split.VAL if bucket == 8 else Split.TEST
