# ruff: noqa: RUF001  (Chinese text is written with full-width punctuation)
"""The cleaning operators' shortcuts give what the long way gives.

- ``fix_mojibake`` returns a text without ftfy's steps only where ``ftfy.fix_encoding`` returns it
  unchanged: ASCII text, and text with none of the characters ftfy's badness pattern needs (a set
  read from the pattern itself, checked here against every alternative of it).
- ``normalize_unicode`` leaves ASCII text as it is (NFC and NFKC change no ASCII character).
- ``remove_control_chars`` removes exactly the characters its definition names, every code point
  checked, in ASCII text and in any other.
- ``collapse_whitespace`` (``str.split``) is the regex it replaced (``\\s+``, then ``strip``).
"""

from __future__ import annotations

import random
import re
import unicodedata

import ftfy
import pytest
from ftfy.badness import BADNESS_RE, is_bad

from lmforge.preprocess import cleaning
from lmforge.preprocess.cleaning import (
    KEPT_PUNCTUATION,
    collapse_whitespace,
    fix_mojibake,
    normalize_unicode,
    remove_control_chars,
)

MOJIBAKE_ZH = "您好，我的订单还没有发货".encode().decode("windows-1252", errors="replace")
TEXTS = [
    "",
    "plain ASCII, order 58213 <b>&amp;</b>\t\n",
    "您好，我的订单还没有发货，请问：什么时候能到？麻烦尽快处理，谢谢！",
    "我的iPhone 15 Pro订单还没发货，order number 58213…",
    "“引号”和‘单引号’ — 还有 ¥1299 与 €30",
    "café déjà vu naïve",
    MOJIBAKE_ZH,
    "cafÃ© dÃ©jÃ  vu",
    "â€œquotedâ€\x9d and Ã± and \x80\x81 controls",
    "こんにちは、注文した商品がまだ届いていません。",
    "Здравствуйте, мой заказ до сих пор не доставлен",
    "│┌┐ box ░▒▓ and ½ ¼ ² ³ ±",
    "ﬁnal ﬂow \ufffd \uf8ff",
]


def _random_texts(seed: int, count: int) -> list[str]:
    """Texts drawn from ASCII, CJK, the characters ftfy's pattern looks for and a few others."""
    rnd = random.Random(seed)
    mojibake = [chr(c) for c in range(0x80, 0x3000) if cleaning._MOJIBAKE_CHARS.fullmatch(chr(c))]  # type: ignore[union-attr]
    pools = [
        [chr(c) for c in range(0x20, 0x7F)],
        [chr(c) for c in range(0x4E00, 0x4F00)] + list(KEPT_PUNCTUATION + "。、“”"),
        mojibake,
        [chr(c) for c in range(0xA0, 0x250)] + ["\u200b", "\ufeff", "\x00", "\u00ad", "\u3000"],
    ]
    texts = []
    for _ in range(count):
        weights = [rnd.random() for _ in pools]
        texts.append("".join(rnd.choice(rnd.choices(pools, weights)[0]) for _ in range(rnd.randint(0, 40))))
    return texts


def test_the_mojibake_shortcut_is_active() -> None:
    assert cleaning._MOJIBAKE_CHARS is not None, "ftfy's badness pattern changed shape: no shortcut"


def test_every_alternative_of_ftfys_pattern_needs_one_of_the_characters() -> None:
    """Each alternative of BADNESS_RE is a sequence with at least one single-character item (a
    literal or a class) whose every character is in ``_MOJIBAKE_CHARS``."""
    parser = __import__("re._parser", fromlist=["parse"])
    ((op, (_, branches)),) = parser.parse(BADNESS_RE.pattern, BADNESS_RE.flags).data
    assert op is parser.BRANCH
    chars = cleaning._MOJIBAKE_CHARS
    assert chars is not None
    for branch in branches:
        items = []
        for item_op, value in branch.data:
            if item_op is parser.LITERAL:
                items.append({value})
            elif item_op is parser.IN and all(kind in (parser.LITERAL, parser.RANGE) for kind, _ in value):
                codes: set[int] = set()
                for kind, arg in value:
                    codes |= {arg} if kind is parser.LITERAL else set(range(arg[0], arg[1] + 1))
                items.append(codes)
        assert any(all(chars.fullmatch(chr(c)) for c in codes) for codes in items), branch


def test_text_without_those_characters_is_never_bad() -> None:
    chars = cleaning._MOJIBAKE_CHARS
    assert chars is not None
    for text in _random_texts(1, 3000):
        if not chars.search(text):
            assert not is_bad(text), text


@pytest.mark.parametrize("text", TEXTS)
def test_fix_mojibake_is_ftfys_fix_encoding(text: str) -> None:
    assert fix_mojibake(text) == ftfy.fix_encoding(text)


def test_fix_mojibake_is_ftfys_fix_encoding_on_random_text() -> None:
    texts = _random_texts(2, 2000)
    texts += [t.encode("utf-8", errors="replace").decode("windows-1252", errors="replace") for t in texts[:500]]
    assert [fix_mojibake(t) for t in texts] == [ftfy.fix_encoding(t) for t in texts]


def test_no_ascii_character_changes_under_normalisation() -> None:
    for form in ("NFC", "NFKC"):
        assert all(unicodedata.normalize(form, chr(c)) == chr(c) for c in range(128))
    ascii_text = "".join(chr(c) for c in range(128)) * 2
    assert normalize_unicode(ascii_text) == unicodedata.normalize("NFKC", ascii_text) == ascii_text


def test_control_characters_are_the_ones_defined_every_code_point() -> None:
    kept = {"\t", "\n", "\r", "\u200c", "\u200d"}
    expected = [c for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Cf", "Cs") and chr(c) not in kept]
    assert [c for c in range(0x110000) if cleaning._CONTROL.fullmatch(chr(c))] == expected
    assert [c for c in range(128) if cleaning._ASCII_CONTROL.fullmatch(chr(c))] == [c for c in expected if c < 128]


@pytest.mark.parametrize("text", [*TEXTS, "a\x00b\x1fc\x7fd\te\nf\rg", "零\u200b宽\ufeff字\u00ad符\u200d"])
def test_remove_control_chars(text: str) -> None:
    assert remove_control_chars(text) == cleaning._CONTROL.sub("", text)


def test_str_split_splits_where_the_whitespace_regex_matches() -> None:
    assert all(bool(re.fullmatch(r"\s", chr(c))) == chr(c).isspace() for c in range(0x110000))
    spaces = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
    texts = [*TEXTS, spaces, f"{spaces}a{spaces}b c{spaces}", " x ", "\u3000您好\u3000\u3000谢谢\u3000"]
    for text in texts:
        assert collapse_whitespace(text) == re.sub(r"\s+", " ", text).strip()
