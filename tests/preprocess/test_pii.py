# ruff: noqa: RUF001, RUF003  (full-width CJK punctuation is what this file is about)
"""PII detection and masking: each detector, the overlap rules, every masking mode, and precision
and recall on the labelled set (tests/data/pii)."""

from __future__ import annotations

import re
import time

import pytest

from lmforge.preprocess.cleaning import clean_text, normalize_unicode
from lmforge.preprocess.pii import (
    MaskMode,
    PiiMasker,
    PiiType,
    Sensitivity,
    card_network_ok,
    detect,
    id_check_digit,
    luhn_ok,
    sensitivity_of,
    valid_id18,
)
from tests.data.pii.evaluate import LABELLED, evaluate, load
from tests.data.pii.generate import build, render

ID = "110105199003071239"  # GB 11643-1999 check digit 9
ID_X = "11010519491231002X"  # the standard's own example, check digit X
CARD19 = "6222021234567890128"  # UnionPay, Luhn-valid
KEY = "k" * 32


def found(text: str) -> list[tuple[str, str]]:
    return [(str(s.type), s.value) for s in detect(text)]


# --- the findings that opened the issue ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("手机13812345678", "手机[PHONE]"),
        (f"身份证号{ID}", "身份证号[ID_CARD]"),
        (f"卡号{CARD19}", "卡号[BANK_CARD]"),
        ("邮箱zhangwei.test@example.com", "邮箱[EMAIL]"),
        (f"身份证 {ID[:6]} {ID[6:14]} {ID[14:]}", "身份证 [ID_CARD]"),  # not half eaten by the phone rule
        ("服务器 192.168.1.100 宕机", "服务器 [IP] 宕机"),  # an IP, not a phone
        ("请问：退款几天到账，谢谢！", "请问：退款几天到账，谢谢！"),  # ，：survive normalisation
    ],
)
def test_issue_findings(raw: str, clean: str) -> None:
    assert clean_text(raw).text == clean


def test_full_width_punctuation_survives_and_full_width_digits_fold() -> None:
    assert normalize_unicode("电话：１３８１２３４５６７８，谢谢") == "电话：13812345678，谢谢"


# --- resident IDs ------------------------------------------------------------------------------


def test_id_check_digit() -> None:
    assert id_check_digit(ID[:17]) == "9"
    assert id_check_digit(ID_X[:17]) == "X"
    assert valid_id18(ID) and valid_id18(ID_X) and valid_id18(ID_X.lower())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ID, [("id_card", ID)]),
        (f"证件号 {ID_X.lower()}", [("id_card", ID_X.lower())]),
        (f"ID {ID[:6]} {ID[6:10]} {ID[10:14]} {ID[14:]}", [("id_card", f"{ID[:6]} {ID[6:10]} {ID[10:14]} {ID[14:]}")]),
        (f"{ID[:6]}-{ID[6:14]}-{ID[14:]}", [("id_card", f"{ID[:6]}-{ID[6:14]}-{ID[14:]}")]),
        ("旧身份证号110105900307123", [("id_card", "110105900307123")]),  # the old 15-digit form
    ],
)
def test_id_cards(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "身份证号110105199003071238",  # wrong check digit
        f"身份证 {ID[:6]} {ID[6:14]} 1238",  # wrong check digit, grouped: nothing of it is a phone either
        "身份证号11010519901307123" + id_check_digit("11010519901307123"),  # a right check digit, month 13
        "990105199003071239",  # no such province
        "110105900307123",  # 15 digits with no ID keyword nearby: too weak to call an ID
        f"{ID}1",  # 19 digits
    ],
)
def test_id_look_alikes(text: str) -> None:
    assert found(text) == []  # not an ID, and no part of it a phone or a card


# --- bank cards --------------------------------------------------------------------------------


def test_luhn_and_networks() -> None:
    assert all(luhn_ok(n) for n in ["4111111111111111", "378282246310005", "5555555555554444", CARD19])
    assert not luhn_ok("4111111111111112")
    assert card_network_ok("4111111111111111") and card_network_ok("378282246310005") and card_network_ok(CARD19)
    assert card_network_ok("4222222222222")  # Visa also issued 13 digits
    assert not card_network_ok("7111111111111111")  # no network issues 7...
    assert not card_network_ok("378282246310005" + "0")  # American Express is 15 digits


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (f"card {CARD19}", CARD19),
        ("卡号 6222 0212 3456 7890 128 到账", "6222 0212 3456 7890 128"),
        ("Visa 4111-1111-1111-1111.", "4111-1111-1111-1111"),
        ("Amex 3782 822463 10005", "3782 822463 10005"),
        ("退款到5555555555554444，谢谢", "5555555555554444"),
        ("卡号 6222 0212 3456 7890 128 2026-11-24 到账", "6222 0212 3456 7890 128"),  # a date after it
        ("+44 20 7946 0958 6011-1111-1111-1117", "6011-1111-1111-1117"),  # a card after a phone
    ],
)
def test_bank_cards(text: str, value: str) -> None:
    assert ("bank_card", value) in found(text)


@pytest.mark.parametrize(
    "text",
    [
        "card 4111111111111112",  # Luhn fails
        "卡号 6222 0212 3456 7890 123",  # Luhn fails; its first 16 digits are not a card either
        "订单号：6228480402564890018",  # Luhn-valid, but labelled as an order number
        "Order #4111111111111111",
        "440305199003071237",  # 18 digits shaped like a resident ID (a wrong check digit), not a card
        "时间戳 1764000000123",
    ],
)
def test_bank_card_look_alikes(text: str) -> None:
    assert found(text) == []


# --- phones ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("13812345678", "13812345678", "mobile"),
        ("手机：138 1234 5678。", "138 1234 5678", "mobile"),
        ("138-1234-5678", "138-1234-5678", "mobile"),
        ("+86 13812345678", "+86 13812345678", "mobile"),
        ("+86 138 1234 5678", "+86 138 1234 5678", "mobile"),
        ("0086-13812345678", "0086-13812345678", "mobile"),
        ("(+86)13812345678", "(+86)13812345678", "mobile"),
        ("Tel13812345678", "13812345678", "mobile"),
        ("mobile: 15632203129 USD", "15632203129", "mobile"),  # a phone label outweighs a currency after it
        ("座机010-61234567", "010-61234567", "landline"),
        ("(0755) 8888 9999", "(0755) 8888 9999", "landline"),
        ("0571-8765432", "0571-8765432", "landline"),
        ("+86 10 6123 4567", "+86 10 6123 4567", "landline"),
        ("+44 20 7946 0958", "+44 20 7946 0958", "international"),
        ("+1 (415) 555-0132", "+1 (415) 555-0132", "international"),
        ("+33 1 23 45 67 89", "+33 1 23 45 67 89", "international"),
        ("+4915112345678", "+4915112345678", "international"),
        ("+1 555 010 2030 3 tickets", "+1 555 010 2030", "international"),
        ("call 555-010-2030", "555-010-2030", "north_american"),
        ("(415) 555-0132", "(415) 555-0132", "north_american"),
        ("1-800-555-0100", "1-800-555-0100", "north_american"),
    ],
)
def test_phones(text: str, value: str, kind: str) -> None:
    spans = detect(text)
    assert [(str(s.type), s.value, s.kind) for s in spans] == [("phone", value, kind)]


@pytest.mark.parametrize(
    "text",
    [
        "下单时间 2026-11-24 10:30:00",
        "20261124103000",
        "2026-11-24T10:30:00+08:00",
        "v1.2.3 和 3.10.12",
        "¥1,234.56 或 12345.67元",
        "价格13812345678元",
        "订单号 13812345678",
        "order 13812345678",
        "编号:13812345678",
        "SKU13812345678",
        "12812345678",  # no such mobile range
        "1381234567",  # ten digits
        "138123456789",  # twelve digits
        "银行卡 3528 0321 8623 0925",  # a card look-alike (Luhn fails); no landline inside it
        "运单号 SF1234567890123",
    ],
)
def test_phone_look_alikes(text: str) -> None:
    assert found(text) == []


def test_two_phones_side_by_side() -> None:
    assert found("手机 138 1234 5678 139 8765 4321") == [("phone", "138 1234 5678"), ("phone", "139 8765 4321")]
    assert found("13812345678/13912345678") == [("phone", "13812345678"), ("phone", "13912345678")]


# --- email, IP, URL credentials, passports -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("邮箱zhangwei.test@example.com", "zhangwei.test@example.com"),
        ("请发到li.na@mail.example.com.cn。谢谢", "li.na@mail.example.com.cn"),
        ("Email: John.Smith+ticket@Example.CO.UK.", "John.Smith+ticket@Example.CO.UK"),
        ("<13812345678@qq.com>", "13812345678@qq.com"),  # the digits belong to the address
        ("mailto:a@b.co", "a@b.co"),
    ],
)
def test_emails(text: str, value: str) -> None:
    assert found(text) == [("email", value)]


@pytest.mark.parametrize("text", ["zhang@localhost", "@zhangwei", "name@", "ftp://anonymous@ftp.example.com"])
def test_email_look_alikes(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("192.168.1.100", "192.168.1.100"),  # an IP, not a phone
        ("登录IP192.168.1.1异常", "192.168.1.1"),
        ("host 10.0.0.1:8080", "10.0.0.1"),
        ("from 2001:db8::8a2e:370:7334: timeout", "2001:db8::8a2e:370:7334"),
        ("[fe80::1ff:fe23:4567:890a]:8443", "fe80::1ff:fe23:4567:890a"),
        ("::ffff:192.168.1.1", "::ffff:192.168.1.1"),
        ("::1", "::1"),
    ],
)
def test_ips(text: str, value: str) -> None:
    assert found(text) == [("ip", value)]


@pytest.mark.parametrize(
    "text",
    [
        "999.1.1.1",
        "256.10.0.1",
        "192.168.1",
        "1.2.3.4.5",
        "version 1.2.3.4",
        "固件版本：2.4.1.0",
        "v1.2.3.4",
        "10:30:00",
        "00:1a:2b:3c:4d:5e",  # a MAC address
        "std::vector and Foo::Bar",
    ],
)
def test_ip_look_alikes(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("postgres://admin:S3cr3t!@db.example.com:5432/app", "postgres://admin:S3cr3t!@db.example.com:5432"),
        ("redis://:hunter2hunter2@10.0.3.7:6379", "redis://:hunter2hunter2@10.0.3.7:6379"),
        ("https://user:p%40ss@example.com/path", "https://user:p%40ss@example.com"),
    ],
)
def test_url_credentials(text: str, value: str) -> None:
    assert found(text) == [("url_credentials", value)]  # the host's IP and the "email" are inside it


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("护照号码：E12345678", ["E12345678"]),
        ("护照 EA1234567", ["EA1234567"]),
        ("Passport No. G12345678", ["G12345678"]),
        ("passport number: 123456789", ["123456789"]),  # any country's number right after the word
        ("护照号码：E12345678、E87654321", ["E12345678", "E87654321"]),
        ("型号 G12345678", []),  # the format alone is too ambiguous
        ("Passport number: E22555211；批次 P20429460 已入库", ["E22555211"]),  # the keyword stops at the clause
        ("护照号码：P22047342 SKU S94148215", ["P22047342"]),
    ],
)
def test_passports(text: str, values: list[str]) -> None:
    assert found(text) == [("passport", v) for v in values]


# --- overlaps ----------------------------------------------------------------------------------


def test_one_span_per_region() -> None:
    assert found(f"{ID}@163.com") == [("email", f"{ID}@163.com")]  # the address, not an ID inside it
    assert found(f"身份证{ID}，卡{CARD19}，手机13812345678") == [
        ("id_card", ID),
        ("bank_card", CARD19),
        ("phone", "13812345678"),
    ]
    # A Luhn-valid card after a phone keeps its digits; the phone ends before it.
    assert found("+65 8760 6225 6011111111111117") == [("phone", "+65 8760 6225"), ("bank_card", "6011111111111117")]


# --- masking -----------------------------------------------------------------------------------


def test_placeholders_by_default() -> None:
    masked = PiiMasker().mask(f"身份证{ID}，卡{CARD19}，护照E12345678，邮箱a@b.cn，IP 10.0.0.1，postgres://u:p@h:1")
    assert masked.text == "身份证[ID_CARD]，卡[BANK_CARD]，护照[PASSPORT]，邮箱[EMAIL]，IP [IP]，[URL_CREDENTIALS]"
    assert masked.counts == {"bank_card": 1, "email": 1, "id_card": 1, "ip": 1, "passport": 1, "url_credentials": 1}
    assert masked.sensitivity is Sensitivity.HIGH


def test_pseudonyms_are_consistent_across_records_and_formats() -> None:
    masker = PiiMasker({PiiType.PHONE: MaskMode.PSEUDONYM, PiiType.EMAIL: MaskMode.PSEUDONYM}, key=KEY)
    a = re.findall(r"\[[A-Z]+_[0-9a-f]{8}\]", masker.mask("手机 138 1234 5678，邮箱 Zhang@Example.com").text)
    b = re.findall(r"\[[A-Z]+_[0-9a-f]{8}\]", masker.mask("+86 13812345678 / zhang@example.com").text)
    c = masker.mask("13912345678").text
    assert a == b and a[0].startswith("[PHONE_") and a[1].startswith("[EMAIL_")  # same values, same tokens
    assert c.startswith("[PHONE_") and c != a[0]  # another number, another token
    other = PiiMasker({PiiType.PHONE: MaskMode.PSEUDONYM}, key="o" * 32).mask("13812345678").text
    assert other != a[0]  # another key, another token


def test_pseudonyms_need_a_long_enough_key() -> None:
    with pytest.raises(ValueError, match="need a key"):
        PiiMasker({PiiType.PHONE: MaskMode.PSEUDONYM})
    with pytest.raises(ValueError, match="at least 32"):
        PiiMasker(key="short")


@pytest.mark.parametrize(
    ("text", "partial"),
    [
        ("13812345678", "138****5678"),
        ("+86 138 1234 5678", "138****5678"),
        ("010-61234567", "010****4567"),
        ("555-010-2030", "555***2030"),
        ("+44 20 7946 0958", "+44******0958"),
        ("zhangwei.test@example.com", "z***@example.com"),
        ("6222 0212 3456 7890 128", "***************0128"),
        (ID_X, "**************002X"),
        ("192.168.1.10", "192.168.*.*"),
        ("2001:db8::1", "2001:db8:*:*:*:*:*:*"),
        ("护照E12345678", "护照E******78"),
        ("postgres://admin:pw@db.example.com:5432/app", "postgres://***:***@db.example.com:5432/app"),
    ],
)
def test_partial_masks(text: str, partial: str) -> None:
    assert PiiMasker(dict.fromkeys(PiiType, MaskMode.PARTIAL)).mask(text).text == partial


@pytest.mark.parametrize(
    ("types", "level"),
    [
        ([], Sensitivity.NONE),
        (["phone", "email", "ip"], Sensitivity.LOW),
        (["phone", "id_card"], Sensitivity.HIGH),
        (["bank_card"], Sensitivity.HIGH),
        (["passport"], Sensitivity.HIGH),
        (["url_credentials"], Sensitivity.HIGH),
    ],
)
def test_sensitivity_levels(types: list[str], level: Sensitivity) -> None:
    assert sensitivity_of(types) is level


# --- measured: the labelled set ----------------------------------------------------------------


def test_labelled_set_is_what_the_generator_writes() -> None:
    assert LABELLED.read_text(encoding="utf-8") == render(build()), "regenerate: python tests/data/pii/generate.py"


def test_labelled_set_covers_chinese_english_and_hard_negatives() -> None:
    records = load()
    spans = [s for r in records for s in r["spans"]]
    assert len(spans) >= 300
    assert {s["type"] for s in spans} == {str(t) for t in PiiType}
    assert any("\u4e00" <= ch <= "\u9fff" for r in records for ch in r["text"])
    assert any(r["spans"] and r["text"].isascii() for r in records)
    categories = {n["category"] for r in records for n in r["negatives"]}
    assert {"order_number", "tracking_number", "timestamp", "date", "version", "amount"} <= categories
    assert {"invalid_id_card", "invalid_bank_card", "invalid_ip"} <= categories


def test_precision_and_recall_on_the_labelled_set() -> None:
    result = evaluate(load())
    report = "\n" + result.table()
    for row in ("id_card", "bank_card", "phone: mobile", "email", "ip"):
        assert result.rows[row].recall >= 0.99, row + report
        assert result.rows[row].precision >= 0.98, row + report
    assert result.overall.precision >= 0.98, report


@pytest.mark.parametrize(
    ("text", "pii_type", "count"),
    [
        ("4111 1111 1111 1111 " * 5000, "bank_card", 5000),  # one long run of digit groups
        ("138 1234 5678 " * 5000, "phone", 5000),
        ("手机13812345678，邮箱a.b@example.com；" * 3000, "email", 3000),  # thousands of spans to resolve
    ],
)
def test_long_texts_take_linear_time(text: str, pii_type: str, count: int) -> None:
    start = time.perf_counter()
    spans = detect(text)
    assert sum(str(s.type) == pii_type for s in spans) == count
    assert time.perf_counter() - start < 5, "about 0.2 s when linear; minutes when quadratic"
