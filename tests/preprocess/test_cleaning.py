# ruff: noqa: RUF001  (full-width CJK punctuation is what this file is about)
from __future__ import annotations

import pytest

from lmforge.common.events import Split
from lmforge.preprocess.cleaning import KEPT_PUNCTUATION, clean_text, normalize_unicode, split_for
from lmforge.preprocess.pii import Sensitivity


@pytest.mark.parametrize(
    ("raw", "clean", "masked"),
    [
        ("<div><p>Hello</p><p>World</p></div>", "Hello World", {}),
        ("<script>steal()</script>Fine &amp; dandy", "Fine & dandy", {}),
        ("\uff26\uff55\uff4c\uff4c  width\n\ttext", "Full width text", {}),  # NFKC folds full-width
        ("mail ann.lee@example.co.uk now", "mail [EMAIL] now", {"email": 1}),
        ("call +1 (555) 010-2030 or 555-010-2030", "call [PHONE] or [PHONE]", {"phone": 2}),
        ("+44 20 7946 0958", "[PHONE]", {"phone": 1}),
        ("order 48213 shipped in 2 days", "order 48213 shipped in 2 days", {}),
        ("<p> </p>", "", {}),
        ("您好，请问：退款几天到账？（急）", "您好，请问：退款几天到账？（急）", {}),  # CJK punctuation stays
        ("手机：１３８１２３４５６７８！", "手机：[PHONE]！", {"phone": 1}),  # full-width digits fold, then mask
        ("邮箱zhangwei.test@example.com，谢谢", "邮箱[EMAIL]，谢谢", {"email": 1}),
        ("<p>服务器 192.168.1.10\u3000宕机</p>", "服务器 [IP] 宕机", {"ip": 1}),
        (
            "身份证 110105 19900307 1239，卡号6222021234567890128",
            "身份证 [ID_CARD]，卡号[BANK_CARD]",
            {"bank_card": 1, "id_card": 1},
        ),
        ("订单号 20261124103000 于 2026-11-24 10:30:00 支付 ¥1,234.56", None, {}),
    ],
)
def test_clean_text(raw: str, clean: str | None, masked: dict[str, int]) -> None:
    result = clean_text(raw)
    assert (result.text, result.masked) == (raw if clean is None else clean, masked)


@pytest.mark.parametrize(
    ("raw", "level"),
    [
        ("no personal data here", Sensitivity.NONE),
        ("call 13812345678 or mail a.b@example.com", Sensitivity.LOW),
        ("call 13812345678, card 6222021234567890128", Sensitivity.HIGH),
    ],
)
def test_sensitivity_follows_what_was_masked(raw: str, level: Sensitivity) -> None:
    assert clean_text(raw).sensitivity is level


def test_normalization_keeps_cjk_punctuation_and_folds_the_rest() -> None:
    assert normalize_unicode(KEPT_PUNCTUATION) == KEPT_PUNCTUATION
    assert normalize_unicode("ＡＢＣ１２３＠ｅｘａｍｐｌｅ．ｃｏｍ，ｆｉ") == "ABC123@example.com，fi"
    assert normalize_unicode("e\u0301，\u00bd") == "\u00e9，1\u20442"  # composition still happens around kept marks


def test_split_is_deterministic_and_roughly_8_1_1() -> None:
    splits = [split_for(f"crm:T-{i}") for i in range(5000)]
    assert splits == [split_for(f"crm:T-{i}") for i in range(5000)]
    share = {s: splits.count(s) / len(splits) for s in Split}
    assert 0.77 < share[Split.TRAIN] < 0.83 and 0.08 < share[Split.VAL] < 0.12 and 0.08 < share[Split.TEST] < 0.12
