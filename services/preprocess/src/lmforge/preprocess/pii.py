# ruff: noqa: RUF001, RUF003  (full-width CJK punctuation is what this file is about)
"""Personal data in Chinese and English business text: find it, then mask it.

A detector is a regex that proposes candidates plus a validator that refuses look-alikes: the
GB 11643-1999 check digit and a real birth date for resident IDs, Luhn and a card network's
prefix and length for bank cards, ``ipaddress`` for IPs, mobile number ranges, and words around
the candidate where the format alone is ambiguous (a passport needs "护照"/"passport" nearby; a
number labelled as an order or tracking number is not a phone or a card). Boundaries are ASCII
letters and digits, never ``\\b`` or ``\\w``: Python counts CJK characters as word characters,
so ``邮箱zhangwei@example.com`` would otherwise lose ``zhangwei`` to the word before it.

Candidates of every type are then resolved to one span per region (``resolve_overlaps``): a span
inside another type's span belongs to it, and otherwise the more specific type wins (an ID card
over a bank card over a phone). Masking replaces each span by a typed placeholder, a keyed
pseudonym or a partial form (``MaskMode``). See docs/curation.md, "PII".
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum


class PiiType(StrEnum):
    ID_CARD = "id_card"
    BANK_CARD = "bank_card"
    PASSPORT = "passport"
    PHONE = "phone"
    EMAIL = "email"
    IP = "ip"
    URL_CREDENTIALS = "url_credentials"


class MaskMode(StrEnum):
    PLACEHOLDER = "placeholder"  # [PHONE]
    PSEUDONYM = "pseudonym"  # [PHONE_3f9a1c2d]: the same value gives the same token in every record
    PARTIAL = "partial"  # 138****5678


class Sensitivity(StrEnum):
    NONE = "none"
    LOW = "low"
    HIGH = "high"


# Typed placeholders by default: a model learns that a phone number goes here, and no digit of it.
DEFAULT_MODES: Mapping[PiiType, MaskMode] = {t: MaskMode.PLACEHOLDER for t in PiiType}

# Identity documents, money and secrets are high; contact details and addresses of machines are low.
SENSITIVITY: Mapping[PiiType, Sensitivity] = {
    PiiType.ID_CARD: Sensitivity.HIGH,
    PiiType.BANK_CARD: Sensitivity.HIGH,
    PiiType.PASSPORT: Sensitivity.HIGH,
    PiiType.URL_CREDENTIALS: Sensitivity.HIGH,
    PiiType.PHONE: Sensitivity.LOW,
    PiiType.EMAIL: Sensitivity.LOW,
    PiiType.IP: Sensitivity.LOW,
}
_SENSITIVITY_ORDER = [Sensitivity.NONE, Sensitivity.LOW, Sensitivity.HIGH]

# Where spans of two types overlap, the more specific (better validated) type keeps the region.
_RANK = {
    PiiType.URL_CREDENTIALS: 0,
    PiiType.ID_CARD: 1,
    PiiType.BANK_CARD: 2,
    PiiType.PASSPORT: 3,
    PiiType.EMAIL: 4,
    PiiType.IP: 5,
    PiiType.PHONE: 6,
}


@dataclass(frozen=True, slots=True)
class PiiSpan:
    """``text[start:end] == value``; ``normalized`` is the canonical form that pseudonyms hash."""

    type: PiiType
    start: int
    end: int
    value: str
    normalized: str
    kind: str = ""  # a finer form: mobile/landline/international/north_american, v4/v6, 18/15, ...


@dataclass(frozen=True, slots=True)
class MaskedText:
    text: str
    spans: tuple[PiiSpan, ...]
    counts: dict[str, int]
    sensitivity: Sensitivity


def sensitivity_of(types: Iterable[PiiType | str]) -> Sensitivity:
    """The highest level among the types found; ``none`` when nothing was found."""
    levels = [SENSITIVITY[PiiType(t)] for t in types]
    return max(levels, key=_SENSITIVITY_ORDER.index, default=Sensitivity.NONE)


# --- boundaries and context --------------------------------------------------------------------

# Not inside a longer run of ASCII letters or digits, and not the integer or fraction of a decimal.
_START = r"(?<![0-9A-Za-z+])(?<!\d[.,])"
_START_PHONE = r"(?<![0-9+])(?<!\d[.,])"  # letters before a phone: see _national_phone_ok
_END = r"(?![0-9A-Za-z]|[.,]\d)"

# A number right after one of these labels is a reference, not a phone, a card or a passport.
_REFERENCE_LABEL = re.compile(
    r"(?:(?:订单|运单|快递单?|物流单?|工单|交易单?|流水|发票|合同|批次|序列|追踪|单)(?:号码?|编号)|订单|编号|"
    r"(?<![A-Za-z])(?i:order|tracking|invoice|transaction|serial|reference|ref|sku|waybill|shipment))"
    r"(?:\s*(?i:no\.?|number|num|id|#))?\s*[:：#=]?\s*$"
)
_CURRENCY_BEFORE = re.compile(r"(?:[¥￥$€£]|(?<![A-Za-z])(?i:rmb|cny|usd|hkd|eur))\s*$")
_CURRENCY_AFTER = re.compile(r"\s*(?:元|圆|块|万|亿|美元|港元|(?i:rmb|cny|usd|yuan)(?![A-Za-z]))")
_ID_KEYWORD = re.compile(r"身份证|身份證|证件号|公民身份号码|(?i:identity|id\s*card|id\s*no|id\s*number)")
_PASSPORT_KEYWORD = re.compile(r"护照|護照|(?i:passport)")
# The only letters that may touch a phone number: its label ("Tel13812345678").
_PHONE_LABEL_GLUED = re.compile(r"(?<![A-Za-z])(?i:tel|phone|mobile|mob|cell|fax)$")
# A number right after one of these is a phone, whatever follows it ("mobile: 13812345678 USD ...").
_PHONE_LABEL = re.compile(
    r"(?:手机|电话|電話|联系方式|座机|传真|(?<![A-Za-z])(?i:tel|phone|mobile|mob|cell|fax|call(?: me)?(?: at| on)?))"
    r"(?:号码?)?\s*[:：]?\s*$"
)
_CLAUSE_BREAK = re.compile(r"[。；;！？!?\n]")
_VERSION_LABEL = re.compile(r"(?:(?<![A-Za-z])(?i:v|ver|version|release|build|firmware)\.?|版本号?|固件)\s*[:：]?\s*$")


def _is_reference(text: str, start: int) -> bool:
    return _REFERENCE_LABEL.search(text, max(0, start - 24), start) is not None


def _is_reference_or_amount(text: str, start: int, end: int) -> bool:
    return bool(
        _is_reference(text, start)
        or _CURRENCY_BEFORE.search(text, max(0, start - 8), start)
        or _CURRENCY_AFTER.match(text, end)
    )


def _keyword_before(keyword: re.Pattern[str], text: str, start: int, window: int = 30) -> bool:
    """``keyword`` within ``window`` characters before ``start``, in the same clause."""
    before = text[max(0, start - window) : start]
    return keyword.search(_CLAUSE_BREAK.split(before)[-1]) is not None


_DIGIT = re.compile(r"\d")
_DIGIT_GROUP = re.compile(r"\d+")
_INTL_GROUP = re.compile(r"\d+\)?")
_GROUP_BEFORE = re.compile(r"(?<!\d)\d{1,6}[ -]$")  # card groups have at most 6 digits;
_GROUP_AFTER = re.compile(r"[ -]\d{1,6}(?!\d)")  # a longer group is another number


def _in_card_shaped_run(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is part of a longer run of digit groups, joined by one kind
    of separator, that has 13-19 digits: a card number (valid or not), not a phone inside it."""
    i, j, count = start, end, len(_digits(text[start:end]))
    while count <= 19 and (m := _GROUP_BEFORE.search(text, max(0, i - 7), i)):
        i, count = m.start(), count + len(m[0]) - 1
    while count <= 19 and (m := _GROUP_AFTER.match(text, j)):
        j, count = m.end(), count + len(m[0]) - 1
    run = text[i:j]
    return (i, j) != (start, end) and 13 <= count <= 19 and len(set(_DIGIT.sub("", run))) == 1


def _digits(s: str) -> str:
    return "".join(filter(str.isdigit, s))


# --- where numbers can be -----------------------------------------------------------------------

# Resident IDs, bank cards, phone numbers and IPv4 addresses are written with digits and a few
# separators, and every character their patterns take is one of these: a match lies inside one
# maximal run of them, which starts with a digit, "(" or "+". Each pattern needs a number of
# digits (an 18-digit ID 17 of them and its check character), so it is run only over the runs
# with that many, each up to two characters past its end (what _END looks at): the matches are
# those of a scan of the whole text, in the same order, found without trying every position of it.
_NUMERIC_RUN = re.compile(r"[\d(+][\d ()+.Xx-]{3,}")  # runs of 4 characters or more: no pattern needs fewer

NumericRun = tuple[int, int, int]  # start, end, digits


def _numeric_runs(text: str) -> list[NumericRun]:
    return [(m.start(), m.end(), sum(map(str.isdecimal, m[0]))) for m in _NUMERIC_RUN.finditer(text)]


def _scan(
    pattern: re.Pattern[str], text: str, runs: Sequence[NumericRun] | None, min_digits: int
) -> list[re.Match[str]]:
    """``pattern.finditer(text)``'s matches, looking only at the runs with ``min_digits`` digits or more."""
    if runs is None:
        runs = _numeric_runs(text)
    n = len(text)
    return [
        m for start, end, digits in runs if digits >= min_digits for m in pattern.finditer(text, start, min(n, end + 2))
    ]


# --- resident ID (GB 11643-1999) ---------------------------------------------------------------

# GB/T 2260 province codes; 71 Taiwan, 81 Hong Kong, 82 Macau, 83 residence permits for Taiwan residents.
# fmt: off
_PROVINCES = frozenset({
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41", "42", "43",
    "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71", "81", "82", "83",
})
# fmt: on
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# Written whole, or grouped 6-8-4 or 6-4-4-4 with one kind of separator.
_ID18 = re.compile(_START + r"(\d{6})([ -]?)(\d{4}(?:\2?)\d{4})\2(\d{3}[0-9Xx])" + _END)
_ID15 = re.compile(_START + r"(\d{6})([ -]?)(\d{6})\2(\d{3})" + _END)


def id_check_digit(first17: str) -> str:
    """The 18th character of a resident ID: ISO 7064 MOD 11-2 over the first 17 digits."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def _valid_date(yyyymmdd: str) -> bool:
    try:
        born = date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return False
    return 1900 <= born.year <= 2099


def _id_structure(digits: str) -> bool:
    """A real province and a real birth date: the shape of an 18-digit ID, check digit aside."""
    return digits[:2] in _PROVINCES and _valid_date(digits[6:14])


def _id_shaped(digits: str) -> bool:
    """18 digits with a province and a birth year: a resident ID, perhaps mistyped, not a card."""
    return len(digits) == 18 and digits[:2] in _PROVINCES and digits[6:8] in ("19", "20")


def valid_id18(value: str) -> bool:
    v = value.upper()
    return len(v) == 18 and v[:17].isdigit() and _id_structure(v) and id_check_digit(v[:17]) == v[17]


def _find_id_cards(text: str, runs: Sequence[NumericRun] | None = None) -> Iterator[PiiSpan]:
    runs = _numeric_runs(text) if runs is None else runs
    for m in _scan(_ID18, text, runs, 17):
        compact = (m[1] + _digits(m[3]) + m[4]).upper()
        if valid_id18(compact):
            yield PiiSpan(PiiType.ID_CARD, m.start(), m.end(), m[0], compact, "18")
    for m in _scan(_ID15, text, runs, 15):
        # The old form has no check digit, so a province and a date are weak evidence on their own.
        compact = m[1] + m[3] + m[4]
        if (
            compact[:2] in _PROVINCES
            and _valid_date("19" + compact[6:12])
            and _keyword_before(_ID_KEYWORD, text, m.start())
        ):
            as18 = compact[:6] + "19" + compact[6:]
            yield PiiSpan(PiiType.ID_CARD, m.start(), m.end(), m[0], as18 + id_check_digit(as18), "15")


# --- bank cards --------------------------------------------------------------------------------

_CARD = re.compile(_START + r"(?:\d{13,19}|\d{4,6}(?P<sep>[ -])\d{2,7}(?:(?P=sep)\d{1,7})+)" + _END)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_network_ok(digits: str) -> bool:
    """The prefix names a card network that issues numbers of this length."""
    n, p2, p3, p4 = len(digits), int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if p2 == 62:  # UnionPay
        return 16 <= n <= 19
    if 3528 <= p4 <= 3589:  # JCB
        return 16 <= n <= 19
    if p2 in (36, 38, 39) or 300 <= p3 <= 305:  # Diners Club
        return 14 <= n <= 19
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65:  # Discover
        return 16 <= n <= 19
    if p2 == 50 or 56 <= p2 <= 69:  # Maestro and other debit ranges
        return 13 <= n <= 19
    return False


def valid_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and card_network_ok(digits) and luhn_ok(digits) and not _id_shaped(digits)


def _find_bank_cards(text: str, runs: Sequence[NumericRun] | None = None) -> Iterator[PiiSpan]:
    n = len(text)
    for start, end, digits in _numeric_runs(text) if runs is None else runs:
        if digits >= 13:  # a card has 13-19 digits (_card_at)
            yield from _find_bank_cards_in(text, start, min(n, end + 2))


def _find_bank_cards_in(text: str, pos: int, endpos: int) -> Iterator[PiiSpan]:
    while m := _CARD.search(text, pos, endpos):
        groups = [(m.start() + g.start(), m.start() + g.end()) for g in _DIGIT_GROUP.finditer(m[0])]
        # A run of 13-19 digits is one number: valid as a whole or not a card (its first 16
        # digits pass Luhn one time in ten). A longer run is numbers written side by side: take
        # its leading or trailing groups of 13-19 digits, the most digits first, and go on after them.
        i = 0
        while i < len(groups):
            rest = groups[i:]
            windows = [(0, len(rest))] if _digits_at_most(rest, 19) else _end_windows(rest)
            hit = next(((a, b) for a, b in windows if _card_at(text, rest[a][0], rest[b - 1][1])), None)
            if hit is None:
                break
            s, e = rest[hit[0]][0], rest[hit[1] - 1][1]
            yield PiiSpan(PiiType.BANK_CARD, s, e, text[s:e], _digits(text[s:e]))
            i += hit[1]
        # The run's last group may start a card written with another separator
        # ("0842 6526-9226-2100-7977"): look again from there.
        pos = groups[-1][0] if i < len(groups) and len(groups) > 1 else m.end()


def _card_at(text: str, start: int, end: int) -> bool:
    # No amount is written as 13-19 bare digits, so only a reference label rules a card out.
    return valid_card(_digits(text[start:end])) and not _is_reference(text, start)


def _digits_at_most(groups: list[tuple[int, int]], limit: int) -> bool:
    count = 0
    for s, e in groups:
        count += e - s
        if count > limit:
            return False
    return True


def _end_windows(groups: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(first, stop) group indexes of the leading and trailing runs with 13-19 digits."""
    found: list[tuple[int, int, int]] = []  # (-digits, leading first, edge): the most digits first
    count = 0
    for k, (s, e) in enumerate(groups):
        count += e - s
        if count > 19:
            break
        if count >= 13:
            found.append((-count, 0, k + 1))
    count = 0
    for k in range(len(groups) - 1, -1, -1):
        count += groups[k][1] - groups[k][0]
        if count > 19:
            break
        if count >= 13:
            found.append((-count, 1, k))
    return [(0, edge) if side == 0 else (edge, len(groups)) for _, side, edge in sorted(found)]


# --- phones ------------------------------------------------------------------------------------

_MOBILE = re.compile(
    _START_PHONE + r"(?P<cc>(?:\+|00)86[ -]?|\(\+?86\)[ -]?)?(?P<num>1[3-9]\d(?P<sep>[ -]?)\d{4}(?P=sep)\d{4})" + _END
)
_AREA = r"10|2\d|[3-9]\d{2}"  # 010, 02x and the four-digit codes 03xx-09xx
_LANDLINE = re.compile(
    _START_PHONE
    + r"(?:(?P<cc>(?:\+|00)86[ -]?)(?P<o1>\()?0?(?P<a1>"
    + _AREA
    + r")(?(o1)\))|(?P<o2>\()?0(?P<a2>"
    + _AREA
    + r")(?(o2)\)))[ -]?(?P<local>[2-9]\d{2,3}[ -]?\d{4})"
    + _END
)
_NANP = re.compile(
    r"(?<![0-9A-Za-z+(])(?<!\d[.,])(?:1[-. ])?(?:\((?P<a1>[2-9]\d{2})\) ?|(?P<a2>[2-9]\d{2})(?P<sep>[-. ]))"
    r"(?P<exchange>\d{3})(?(sep)(?P=sep)|[-. ])(?P<line>\d{4})" + _END
)
# E.164: "+", a country code and at most 15 digits in all; +86 numbers are checked by the rules above.
# A one-digit group only inside the number (+33 1 23 45 67 89), never as its last group ("... 3 tickets").
_INTL = re.compile(r"(?<![0-9A-Za-z+])\+(?!86)[1-9]\d*(?:[ .-]?\(\d{1,4}\)|[ .-]\d{2,}|[ .-]\d(?=[ .-]\d))*" + _END)


def _national_phone_ok(text: str, start: int, end: int) -> bool:
    """The checks a phone number without a "+" needs: its own digits, not a code, card, reference or amount."""
    before = text[max(0, start - 12) : start]
    if before[-1:].isascii() and before[-1:].isalpha() and not _PHONE_LABEL_GLUED.search(before):
        return False  # a letter may touch a phone number only as its label; SKU13812345678 is a code
    if _in_card_shaped_run(text, start, end):
        return False
    if _PHONE_LABEL.search(before):
        return True
    if text[start:end].isdigit():  # an amount is a bare run of digits, never "136 5931 6067" or "+86 ..."
        return not _is_reference_or_amount(text, start, end)
    return not _is_reference(text, start)


def _find_phones(text: str, runs: Sequence[NumericRun] | None = None) -> Iterator[PiiSpan]:
    runs = _numeric_runs(text) if runs is None else runs
    for m in _scan(_MOBILE, text, runs, 11):
        if _national_phone_ok(text, m.start(), m.end()):
            yield PiiSpan(PiiType.PHONE, m.start(), m.end(), m[0], "+86" + _digits(m["num"]), "mobile")
    for m in _scan(_LANDLINE, text, runs, 10):  # 0, a code of 2 digits or more, 7 digits or more
        if _national_phone_ok(text, m.start(), m.end()):
            normalized = "+86" + (m["a1"] or m["a2"]) + _digits(m["local"])
            yield PiiSpan(PiiType.PHONE, m.start(), m.end(), m[0], normalized, "landline")
    for m in _scan(_NANP, text, runs, 10):
        if _national_phone_ok(text, m.start(), m.end()):
            normalized = "+1" + (m["a1"] or m["a2"]) + m["exchange"] + m["line"]
            yield PiiSpan(PiiType.PHONE, m.start(), m.end(), m[0], normalized, "north_american")
    for m in _scan(_INTL, text, runs, 8) if "+" in text else ():  # 8 digits or more (_intl_ends)
        for end in _intl_ends(m):
            value = text[m.start() : end]
            yield PiiSpan(PiiType.PHONE, m.start(), end, value, "+" + _digits(value), "international")


def _intl_ends(m: re.Match[str]) -> list[int]:
    """Where an international number may end: after any digit group that gives it 8 to 15 digits.
    Without a country's numbering plan, a number written right after it ("+65 8760 6225 6258 ...")
    may or may not be part of it; the longest that no better validated span overlaps is kept."""
    ends, count = [], 0
    for g in _INTL_GROUP.finditer(m[0]):
        count += sum(map(str.isdigit, g[0]))
        if count > 15:
            break
        if count >= 8:
            ends.append(m.start() + g.end())
    return ends


# --- email, IP, URL credentials, passports -----------------------------------------------------

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])"
    r"(?P<local>[A-Za-z0-9_%+-](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})"
    r"(?![A-Za-z0-9-]|\.[A-Za-z0-9])"
)
# A letter may precede an address only as "IP" ("登录IP192.168.1.1"); "v1.2.3.4" is a version.
_IPV4 = re.compile(r"(?<![0-9.])(?<!\d,)\d{1,3}(?:\.\d{1,3}){3}(?![0-9A-Za-z]|\.\d)")
_LETTER_BEFORE_IP = re.compile(r"(?<![A-Za-z])(?i:ip)$")
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{1,4}|(?=::))(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?![0-9A-Za-z])"
)
_USERINFO = r"[A-Za-z0-9._~%!$&'*+,;=-]"
_URL_CREDENTIALS = re.compile(
    r"(?<![A-Za-z0-9+.-])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{1,15})://"
    r"(?P<user>" + _USERINFO + r"*):(?P<password>" + _USERINFO + r"(?:" + _USERINFO + r"|:)*)@"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?P<port>:\d{1,5})?"
)
# Chinese passports: E + 8 digits, E + a letter (not I or O) + 7 digits, G/D/S/P + 8 digits.
_PASSPORT_CN = re.compile(r"(?<![0-9A-Za-z])(?:[EGDSP]\d{8}|E[A-HJ-NP-Z]\d{7})(?![0-9A-Za-z])")
# Any country's number right after the word: "Passport No. 123456789", "护照号码：G12345678".
_PASSPORT_LABELLED = re.compile(
    r"(?:(?<![A-Za-z])(?i:passport)(?:\s*(?i:no\.?|number|#))?|护照(?:号码?)?|護照(?:號碼?)?)\s*[:：#]?\s*"
    r"(?P<value>[A-Z0-9]{6,9})(?![0-9A-Za-z])"
)


def _find_emails(text: str, runs: Sequence[NumericRun] | None = None) -> Iterator[PiiSpan]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        local, domain = m["local"], m["domain"]
        if text.endswith("://", 0, m.start()):
            continue  # ftp://anonymous@host: a URL's user name, not a mailbox
        if ".." in local or local.startswith(".") or local.endswith("."):
            continue
        yield PiiSpan(PiiType.EMAIL, m.start(), m.end(), m[0], f"{local}@{domain}".lower())


# Two colons with at most four hex digits between them: every IPv6 match has them, at most four
# characters after its start.
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")


def _find_ips(text: str, runs: Sequence[NumericRun] | None = None) -> Iterator[PiiSpan]:
    runs = _numeric_runs(text) if runs is None else runs
    dotted = [(start, end, digits) for start, end, digits in runs if digits >= 4 and text.count(".", start, end) >= 3]
    for m in _scan(_IPV4, text, dotted, 4):  # four numbers, three dots
        before = text[max(0, m.start() - 12) : m.start()]
        if before[-1:].isascii() and before[-1:].isalpha() and not _LETTER_BEFORE_IP.search(before):
            continue
        if _VERSION_LABEL.search(before):
            continue  # "version 1.2.3.4"
        try:
            addr = ipaddress.IPv4Address(m[0])  # refuses octets above 255 and leading zeros
        except ValueError:
            continue
        yield PiiSpan(PiiType.IP, m.start(), m.end(), m[0], str(addr), "v4")
    hint = _IPV6_HINT.search(text)
    for m in _IPV6.finditer(text, max(0, hint.start() - 4)) if hint else ():
        candidate = m[0]
        if not any(map(str.isdigit, candidate)):
            continue  # "Foo::Bar", "dead::beef" in code and prose
        try:
            addr6 = ipaddress.IPv6Address(candidate)
        except ValueError:
            trimmed = candidate.rstrip(":")  # "2001:db8::1: ..." ends a sentence with a colon
            if trimmed == candidate or trimmed.count(":") < 2:
                continue
            try:
                addr6 = ipaddress.IPv6Address(trimmed)
            except ValueError:
                continue
            candidate = trimmed
        yield PiiSpan(PiiType.IP, m.start(), m.start() + len(candidate), candidate, str(addr6), "v6")


def _find_url_credentials(text: str, runs: Sequence[NumericRun] | None = None) -> Iterator[PiiSpan]:
    if "://" not in text:
        return
    for m in _URL_CREDENTIALS.finditer(text):
        yield PiiSpan(PiiType.URL_CREDENTIALS, m.start(), m.end(), m[0], m[0])


def _find_passports(text: str, runs: Sequence[NumericRun] | None = None) -> Iterator[PiiSpan]:
    # Both kinds need the word: a Chinese passport number one before it (_keyword_before), any
    # other one right after it. (?i:passport) matches only what case-folds to "passport".
    if "护照" not in text and "護照" not in text and "passport" not in text.casefold():
        return
    for m in _PASSPORT_CN.finditer(text):
        if _keyword_before(_PASSPORT_KEYWORD, text, m.start()) and not _is_reference(text, m.start()):
            yield PiiSpan(PiiType.PASSPORT, m.start(), m.end(), m[0], m[0], "cn")
    for m in _PASSPORT_LABELLED.finditer(text):
        value = m["value"]
        if sum(map(str.isdigit, value)) >= 5:
            yield PiiSpan(PiiType.PASSPORT, m.start("value"), m.end("value"), value, value, "labelled")


# Each takes the text and, optionally, its numeric runs (``_numeric_runs``), found once per text.
DETECTORS: Mapping[PiiType, Callable[[str, Sequence[NumericRun] | None], Iterator[PiiSpan]]] = {
    PiiType.URL_CREDENTIALS: _find_url_credentials,
    PiiType.ID_CARD: _find_id_cards,
    PiiType.BANK_CARD: _find_bank_cards,
    PiiType.PASSPORT: _find_passports,
    PiiType.EMAIL: _find_emails,
    PiiType.IP: _find_ips,
    PiiType.PHONE: _find_phones,
}


def resolve_overlaps(candidates: Iterable[PiiSpan]) -> list[PiiSpan]:
    """One span per region.

    A span inside a span of another type belongs to it (the digits of ``13812345678@qq.com``,
    the host of a URL with credentials). Otherwise the more specific type wins (an ID card over
    a bank card over a phone), then the longer span, then the earlier one.
    """
    kept: list[PiiSpan] = []
    for cluster in _overlapping_clusters(candidates):
        if len(cluster) == 1:  # overlaps nothing: kept
            kept += cluster
            continue
        outer = [
            c
            for c in cluster
            if not any(
                o.type != c.type and o.start <= c.start and c.end <= o.end and (o.start, o.end) != (c.start, c.end)
                for o in cluster
            )
        ]
        chosen: list[PiiSpan] = []
        for c in sorted(outer, key=lambda s: (_RANK[s.type], s.start - s.end, s.start)):
            if all(c.end <= k.start or c.start >= k.end for k in chosen):
                chosen.append(c)
        kept += chosen
    return sorted(kept, key=lambda s: s.start)


def _overlapping_clusters(candidates: Iterable[PiiSpan]) -> Iterator[list[PiiSpan]]:
    """Groups of candidates connected by overlaps; spans in different groups never compete."""
    cluster: list[PiiSpan] = []
    reach = -1
    for c in sorted(candidates, key=lambda s: (s.start, -s.end)):
        if cluster and c.start >= reach:
            yield cluster
            cluster = []
        cluster.append(c)
        reach = max(reach, c.end) if len(cluster) > 1 else c.end
    if cluster:
        yield cluster


_ALL_TYPES = frozenset(PiiType)


def detect(text: str, types: Iterable[PiiType] | None = None) -> list[PiiSpan]:
    """Every PII span in ``text``, non-overlapping, in order."""
    wanted = set(types) if types is not None else _ALL_TYPES
    runs = _numeric_runs(text)
    return resolve_overlaps(span for t, find in DETECTORS.items() if t in wanted for span in find(text, runs))


# --- masking -----------------------------------------------------------------------------------


def _keep_ends(s: str, head: int, tail: int) -> str:
    if len(s) <= head + tail:
        return "*" * len(s)
    return s[:head] + "*" * (len(s) - head - tail) + s[len(s) - tail :]


def partial(span: PiiSpan) -> str:
    """A form a person can still recognise (the last digits of a card) that no longer identifies."""
    n = span.normalized
    if span.type is PiiType.PHONE:
        if span.kind == "mobile":
            return _keep_ends(n[3:], 3, 4)  # 138****5678
        if span.kind == "landline":
            return _keep_ends("0" + n[3:], 3, 4)  # 010*****5678
        if span.kind == "north_american":
            return _keep_ends(n[2:], 3, 4)  # 555***2030
        return _keep_ends(n, 3, 4)  # +44*****0958
    if span.type is PiiType.EMAIL:
        local, _, domain = n.partition("@")
        return f"{local[0]}***@{domain}"
    if span.type in (PiiType.ID_CARD, PiiType.BANK_CARD):
        value = _digits(span.value) + ("X" if span.value[-1:] in "Xx" else "")
        return _keep_ends(value, 0, 4)
    if span.type is PiiType.PASSPORT:
        return _keep_ends(n, 1, 2)
    if span.type is PiiType.IP:
        if span.kind == "v4":
            return ".".join([*n.split(".")[:2], "*", "*"])
        head = ipaddress.IPv6Address(n).exploded.split(":")[:2]
        return ":".join([*(h.lstrip("0") or "0" for h in head), *["*"] * 6])
    m = _URL_CREDENTIALS.fullmatch(span.value)
    assert m is not None
    return f"{m['scheme']}://***:***@{m['host']}{m['port'] or ''}"


class PiiMasker:
    """Detects and masks, one mode per type (``DEFAULT_MODES`` where a type is not named).

    Pseudonyms are ``HMAC-SHA256(key, "<type>:<normalized value>")``, cut to 8 hex characters, so
    the same phone number written ``138 1234 5678`` or ``+86 13812345678`` gets the same token in
    every record, and nobody without the key can test a guess against it.
    """

    def __init__(self, modes: Mapping[PiiType, MaskMode] | None = None, *, key: bytes | str | None = None) -> None:
        self.modes = {**DEFAULT_MODES, **{PiiType(t): MaskMode(m) for t, m in (modes or {}).items()}}
        self._key = key.encode() if isinstance(key, str) else key
        if self._key is not None and len(self._key) < 32:
            raise ValueError("the pseudonym key must be at least 32 characters (openssl rand -hex 32)")
        if MaskMode.PSEUDONYM in self.modes.values() and self._key is None:
            raise ValueError("consistent pseudonyms need a key: set the preprocess PII__PSEUDONYM_KEY setting")

    def pseudonym(self, span: PiiSpan) -> str:
        assert self._key is not None
        digest = hmac.new(self._key, f"{span.type}:{span.normalized}".encode(), hashlib.sha256).hexdigest()
        return f"[{span.type.name}_{digest[:8]}]"

    def replacement(self, span: PiiSpan) -> str:
        mode = self.modes[span.type]
        if mode is MaskMode.PSEUDONYM:
            return self.pseudonym(span)
        if mode is MaskMode.PARTIAL:
            return partial(span)
        return f"[{span.type.name}]"

    def mask(self, text: str) -> MaskedText:
        spans = detect(text)
        parts: list[str] = []
        last = 0
        for span in spans:
            parts += [text[last : span.start], self.replacement(span)]
            last = span.end
        parts.append(text[last:])
        counts = Counter(str(s.type) for s in spans)
        return MaskedText("".join(parts), tuple(spans), dict(sorted(counts.items())), sensitivity_of(counts))
