"""The cleaning pipeline: HTML to text, NFKC, whitespace, PII masking, a deterministic split.

Every step is a pure function of the text (or the record id), so the same record always cleans
the same way; ``PIPELINE_CONFIG`` names the steps and its hash goes into each dataset manifest.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from html.parser import HTMLParser

from lmforge.common.events import Split

PIPELINE_CONFIG = {
    "version": 1,
    "steps": ["strip_html", "nfkc", "mask_email", "mask_phone", "collapse_whitespace"],
    "split": {"train": 8, "val": 1, "test": 1, "by": "sha256(record_id) % 10"},
    "dedup": "exact, sha256 of cleaned text",
}
CONFIG_HASH = hashlib.sha256(json.dumps(PIPELINE_CONFIG, sort_keys=True).encode()).hexdigest()[:16]

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# International or national numbers with separators: +1 (555) 010-2030, 555-010-2030, +44 20 7946 0958.
PHONE = re.compile(r"(?<![\w+])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}\b")
WHITESPACE = re.compile(r"\s+")
_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "section"}


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


def clean_text(text: str) -> tuple[str, dict[str, int]]:
    """Cleaned text and how many entities of each type were masked."""
    out = unicodedata.normalize("NFKC", strip_html(text))
    out, emails = EMAIL.subn("[EMAIL]", out)
    out, phones = PHONE.subn("[PHONE]", out)
    out = WHITESPACE.sub(" ", out).strip()
    masked = {k: v for k, v in (("email", emails), ("phone", phones)) if v}
    return out, masked


def split_for(record_id: str) -> Split:
    bucket = int(hashlib.sha256(record_id.encode()).hexdigest(), 16) % 10
    return Split.TRAIN if bucket < 8 else Split.VAL if bucket == 8 else Split.TEST
