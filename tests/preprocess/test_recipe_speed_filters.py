# ruff: noqa: RUF001  (Chinese text is written with full-width punctuation)
"""The filters' faster ways of measuring give the same measures.

- Character counts (symbol and digit ratios, the letters the language filter counts) come from
  sets of characters that hold every whitespace, punctuation, symbol and decimal digit Unicode has.
- Token n-grams are counted as before, and a text's tokens kept for the next filter are its own.
- The language measure is the float py3langid's ``rank`` gives, whether the certain shortcut
  answers or the exact computation does: Chinese, English, mixed Chinese and English, Japanese
  with kana, other languages, very short texts, and every text of the PII labelled set.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from collections.abc import Collection

import numpy as np
import pytest

from lmforge.preprocess import filters
from tests.data.pii.evaluate import load

CJK = filters._CJK
TEXTS = [
    "您好，我的订单还没有发货，请问：什么时候能到？麻烦尽快处理，谢谢！",
    "Hello, my order has not arrived yet and the tracking page has not changed for a week. Please help.",
    "发票抬头错了，请重开。",
    "Where is my refund?",
    "我的iPhone 15 Pro订单还没发货，order number 58213, tracking shows nothing since Monday。",
    "发货日期 2020年10月9日，客户说 login from the app failed again and the refund is missing",
    "ticket 1215 (aadafe): parcel 9621585 arrived damaged",
    "客户：我的蓝牙耳机坏了。 客服：请提供订单号，IP 地址和手机号，我们帮您处理！",
    "こんにちは、注文した商品がまだ届いていません。確認していただけますでしょうか。よろしくお願いします。",
    "注文番号を確認してください、商品が届きません",
    "안녕하세요, 주문한 상품이 아직 도착하지 않았습니다. 확인 부탁드립니다.",
    "Bonjour, je voudrais savoir pourquoi ma commande n'est toujours pas arrivée après deux semaines.",
    "Guten Tag, meine Bestellung ist leider noch nicht angekommen und ich warte schon zwei Wochen.",
    "Здравствуйте, мой заказ до сих пор не доставлен, хотя прошло уже две недели с момента оплаты.",
    "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore",
    "谢谢",
    "好",
    "ok",
    "IP",
    "：  ，  。  IP  ！  ：",
    "",
    " ",
    "a",
    "中",
    "😀👍 emoji only 🎉",
    "refund " * 30,
    "退款退款退款" * 12,
    "ｆｕｌｌ－ｗｉｄｔｈ　ｔｅｘｔ　１２３",
    "𠀀𠀁𠀂 rare ideographs 𪚥",
]
ALLOWED: list[list[str]] = [["en", "zh"], ["zh", "en"], ["zh"], ["en"], ["ja"], ["fr", "de"], ["en", "en"], ["xx"], []]


def _labelled() -> list[str]:
    return [record["text"] for record in load()]


def _reference_probability(text: str, allowed: Collection[str]) -> float:
    """What the language filter computed from py3langid before: its ``rank``, summed."""
    ranked = dict(filters._identifier().rank(text))
    return min(1.0, sum(ranked.get(lang, 0.0) for lang in allowed))


def _reference_language(text: str, allowed: Collection[str], min_probability: float, min_chars: int) -> filters.Verdict:
    words = filters._NOT_LANGUAGE.sub(" ", text)
    parts = ["".join(re.findall(f"[{CJK}]", words)), re.sub(f"[{CJK}]", " ", words)]
    sizes = [sum(1 for c in part if not c.isspace() and not filters._is_symbol(c)) for part in parts]
    if sum(sizes) < min_chars:
        return filters.Verdict(True, 1.0, min_probability)
    mass = 0.0
    for part, size in zip(parts, sizes, strict=True):
        if size:
            mass += size * _reference_probability(part, allowed)
    measured = round(mass / sum(sizes), 6)
    return filters.Verdict(measured >= min_probability, measured, min_probability)


def test_the_character_sets_are_complete() -> None:
    """Nothing from U+20000 on is whitespace, punctuation, a symbol or a decimal digit."""
    for code in range(0x20000, 0x110000):
        c = chr(code)
        assert not (c.isspace() or c.isdecimal() or filters._is_symbol(c)), hex(code)
    for code in range(0x20000):
        c = chr(code)
        assert (c in filters._SPACE.chars) == c.isspace()
        assert (c in filters._SYMBOL.chars) == (filters._is_symbol(c) and not c.isspace())
        assert (c in filters._DIGIT.chars) == c.isdecimal()
        assert not (c.isspace() and filters._is_symbol(c))
        kind = 1 if c.isspace() else 2 if filters._is_symbol(c) else 3 if c.isdecimal() else 0
        assert filters._CLASS[code] == kind
    assert filters._CLASS[0x20000] == 0  # what every code point from U+20000 on is counted as


def _random_texts(seed: int, count: int) -> list[str]:
    rnd = random.Random(seed)
    alphabet = (
        [chr(c) for c in range(0x20, 0x7F)] + list("　，。！？：；（）～…“”、０１２３") + ["\t", "\n", "\u3000", "\xa0"]
    )
    alphabet += [chr(c) for c in range(0x4E00, 0x4E40)] + ["٣", "४", "²", "½", "€", "😀"]
    return ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 60))) for _ in range(count)]


def _reference_ratio(text: str, counted: object) -> float:
    chars = [c for c in text if not c.isspace()]
    return round(sum(1 for c in chars if counted(c)) / len(chars), 6) if chars else 0.0  # type: ignore[operator]


def test_symbol_and_digit_ratios() -> None:
    for text in TEXTS + _random_texts(3, 2000):
        assert filters.symbol_ratio(text, 0.5).measured == _reference_ratio(text, filters._is_symbol)
        assert filters.digit_ratio(text, 0.9).measured == _reference_ratio(text, str.isdecimal)


def test_repeated_ngrams() -> None:
    for text in TEXTS + _random_texts(4, 1000):
        for n in (1, 2, 3, 5):
            toks = filters.tokens(text)
            grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
            expected = round(1 - len(Counter(grams)) / len(grams), 6) if grams else 0.0
            assert filters.repeated_ngrams(text, n, 0.5).measured == expected


def test_kept_tokens_and_counts_are_the_texts_own() -> None:
    """Equal texts that are different objects, and a text measured again after another."""
    a = "退款 refund 退款 refund 退款 refund"
    b = "".join(["退款 refund 退款 refund 退款 ", "refund"])
    assert a == b and a is not b
    assert filters.token_length(a, 2).measured == filters.token_length("one two", 2).measured + 7
    assert filters.repeated_ngrams(b, 3, 0.5).measured == filters.repeated_ngrams(a, 3, 0.5).measured
    assert filters.symbol_ratio("!!", 0.5).measured == 1.0
    assert filters.digit_ratio("!!", 0.5).measured == 0.0
    assert filters.symbol_ratio("ab", 0.5).measured == 0.0


@pytest.mark.parametrize("text", TEXTS)
def test_the_automaton_is_read_as_py3langid_reads_it(text: str) -> None:
    model = filters._language_model()
    identifier = filters._identifier()
    state, expected = 0, []
    for byte in text.encode("utf8", errors="surrogatepass"):
        state = identifier.tk_nextmove[(state << 8) + byte]
        expected.append(state)
    assert model.states(text).tolist() == expected
    counts = model.counts(model.states(text))
    reference = identifier.instance2fv(text)
    assert counts.dtype == reference.dtype and np.array_equal(counts, reference)


@pytest.mark.parametrize("allowed", ALLOWED)
def test_allowed_probability_is_ranks(allowed: list[str]) -> None:
    model = filters._language_model()
    texts = TEXTS + _labelled()[:150]
    for text in texts:
        assert model.allowed_probability(text, allowed) == _reference_probability(text, allowed), text


def test_both_ways_are_taken() -> None:
    """Certain answers (1.0 for an allowed language, 0.0 for none) and exact ones both occur."""
    model = filters._language_model()
    positions = [model.index["en"], model.index["zh"]]
    answers = Counter(model._certain(model.states(text), positions) for text in TEXTS)
    assert answers[1.0] >= 3 and answers[0.0] >= 3 and answers[None] >= 5


def test_language_verdicts_on_the_labelled_set_and_samples() -> None:
    for text in TEXTS + _labelled():
        for allowed, minimum, min_chars in ((["en", "zh"], 0.1, 40), (["en", "zh"], 0.5, 10), (["zh"], 0.9, 1)):
            assert filters.language(text, allowed, minimum, min_chars) == _reference_language(
                text, allowed, minimum, min_chars
            ), text


def test_the_word_pattern_takes_whole_words() -> None:
    """Anchored at a word's start, the pattern makes the same replacements as unanchored."""
    word = f"[^\\s{CJK}]"
    unanchored = re.compile(f"{word}*\\d{word}*|{word}+@{word}+|{word}+://{word}+")
    rnd = random.Random(5)
    alphabet = "ab1@:/. \t中あ9x-"
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40))) for _ in range(20000)]
    for text in texts + TEXTS:
        expected = unanchored.sub(" ", text)
        assert filters._NOT_LANGUAGE.sub(" ", text) == expected
        if text.isascii():
            assert filters._NOT_LANGUAGE_ASCII.sub(" ", text) == expected


def test_no_character_is_whitespace_and_symbol() -> None:
    assert not [c for c in range(0x110000) if chr(c).isspace() and unicodedata.category(chr(c))[0] in "PS"]


def test_measuring_until_kept_decides_the_same() -> None:
    """``exact=False`` (the recipe's): the same decision; a dropped text's measure is the exact one,
    a kept text's at most the exact one (a lower bound), and some texts stop early."""
    early = 0
    for text in TEXTS + _labelled():
        for allowed, minimum, min_chars in ((["en", "zh"], 0.1, 40), (["en", "zh"], 0.5, 10), (["zh"], 0.9, 1)):
            full = filters.language(text, allowed, minimum, min_chars)
            quick = filters.language(text, allowed, minimum, min_chars, exact=False)
            assert quick.keep == full.keep and quick.threshold == full.threshold, text
            if full.keep:
                assert minimum <= quick.measured <= full.measured, text
                early += quick.measured < full.measured
            else:
                assert quick == full, text
    assert early > 0


def test_ascii_tokens_are_the_runs_between_whitespace() -> None:
    for text in [t for t in TEXTS + _random_texts(6, 2000) if t.isascii()]:
        assert filters.tokens(text) == filters._TOKEN.findall(text) == text.split()
