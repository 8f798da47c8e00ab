# ruff: noqa: RUF001  (full-width CJK punctuation and digits are what this file is about)
"""Writes ``labelled.jsonl``: Chinese and English business snippets with every PII span labelled,
and hard negatives (order and tracking numbers, timestamps, dates, versions, amounts, invalid
look-alikes) that must stay unmasked.

    .venv/bin/python tests/data/pii/generate.py

One JSON object per line: ``text``, ``spans`` (``type``, ``start``, ``end``, ``kind``: the PII,
``text[start:end]``) and ``negatives`` (``category``, ``start``, ``end``: what must not be masked).
Deterministic (``SEED``); ``tests/preprocess/test_pii.py`` checks that the file is what this script
writes. Valid values are computed here, independently of ``lmforge.preprocess.pii``: resident IDs
with the GB 11643-1999 check digit and a real birth date, card numbers with the Luhn digit and a
real network prefix. Invalid look-alikes (a wrong check digit, a Luhn failure, 999.1.1.1) are
negatives.

Span conventions: a phone span includes its country prefix (``+86``, ``0086``, ``(+86)``) and
the parentheses around an area code; a URL-credentials span runs from the scheme to the end of
the host and port (the path is not secret); a full-width-digit phone is labelled on the raw text
(NFKC folds it to ASCII without changing its length). Names and postal addresses are not labelled:
the detectors do not look for them.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

SEED = 20261125
OUT = Path(__file__).with_name("labelled.jsonl")

# fmt: off
REGIONS = [
    "110101", "110105", "110108", "120101", "130102", "140105", "150102", "210102", "220102", "230103", "310101",
    "310104", "310115", "320102", "320505", "330106", "340104", "350203", "360102", "370202", "410105", "420106",
    "430104", "440103", "440305", "440106", "450103", "460105", "500103", "510107", "520102", "530102", "540102",
    "610113", "620102", "630102", "640104", "650102",
]
MOBILE_PREFIXES = [
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "145", "147", "149", "150", "151", "152",
    "153", "155", "156", "157", "158", "159", "166", "170", "171", "172", "173", "175", "176", "177", "178", "180",
    "181", "182", "183", "184", "185", "186", "187", "188", "189", "191", "193", "195", "196", "197", "198", "199",
]
# fmt: on
CARD_NETWORKS: list[tuple[list[str], list[int]]] = [
    (["622202", "622848", "621700", "622588", "621483", "625800", "622609", "621226"], [16, 19]),  # UnionPay
    (["4"], [16]),  # Visa
    (["51", "52", "53", "54", "55", "2223", "2500", "2720"], [16]),  # Mastercard
    (["34", "37"], [15]),  # American Express
    (["3528", "3566"], [16]),  # JCB
    (["6011", "65"], [16]),  # Discover
]
# fmt: off
EMAIL_LOCALS = [
    "zhangwei", "zhangwei.test", "li.na", "wang_fang", "liuyang88", "chen-jie", "xiaoming2026", "zhao.lei",
    "hr.recruit", "john.smith", "a.lee", "support+ticket", "jane_doe99", "m.garcia", "sales", "tom.h",
    "13812345678", "987654321",
]
EMAIL_DOMAINS = [
    "example.com", "example.cn", "qq.com", "163.com", "126.com", "mail.example.com.cn", "corp.example.co.uk",
    "gmail.com", "outlook.com", "company.com.cn", "foxmail.com", "sina.com",
]
# fmt: on


@dataclass
class Segment:
    """A piece of text with its labelled PII spans and hard negatives (offsets within the piece)."""

    text: str
    spans: list[dict[str, object]] = field(default_factory=list)
    negatives: list[dict[str, object]] = field(default_factory=list)
    lang: str = "zh"


def fill(template: str, value: str, *, pii: tuple[str, str] | None = None, negative: str | None = None) -> Segment:
    """``template`` with ``{v}`` replaced by ``value``, labelled as PII ``(type, kind)`` or as a negative."""
    start = template.index("{v}")
    text = template[:start] + value + template[start + 3 :]
    seg = Segment(text, lang="zh" if re.search(r"[\u4e00-\u9fff]", template) else "en")
    where = {"start": start, "end": start + len(value)}
    if pii:
        seg.spans.append({"type": pii[0], "kind": pii[1], **where})
    if negative:
        seg.negatives.append({"category": negative, **where})
    return seg


# --- valid values ------------------------------------------------------------------------------


def id_check(first17: str) -> str:
    weights = [2 ** (17 - i) % 11 for i in range(17)]  # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights, strict=True)) % 11]


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):  # the check digit will sit to the right of body
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def birth(rnd: random.Random, first: int, last: int) -> date:
    start = date(first, 1, 1)
    return start + timedelta(days=rnd.randrange((date(last, 12, 31) - start).days + 1))


def id18(rnd: random.Random, *, valid: bool = True) -> str:
    body = rnd.choice(REGIONS) + birth(rnd, 1940, 2012).strftime("%Y%m%d") + f"{rnd.randrange(1000):03d}"
    check = id_check(body)
    if not valid:
        check = rnd.choice([c for c in "0123456789X" if c != check])
    return body + (check.lower() if check == "X" and rnd.random() < 0.3 else check)


def id18_grouped(rnd: random.Random) -> str:
    v = id18(rnd)
    return f"{v[:6]} {v[6:14]} {v[14:]}" if rnd.random() < 0.7 else f"{v[:6]} {v[6:10]} {v[10:14]} {v[14:]}"


def id15(rnd: random.Random) -> str:
    return rnd.choice(REGIONS) + birth(rnd, 1930, 1999).strftime("%y%m%d") + f"{rnd.randrange(1000):03d}"


def card(rnd: random.Random, *, valid: bool = True) -> str:
    prefixes, lengths = rnd.choice(CARD_NETWORKS)
    prefix, length = rnd.choice(prefixes), rnd.choice(lengths)
    body = prefix + "".join(rnd.choice(string.digits) for _ in range(length - len(prefix) - 1))
    check = luhn_digit(body)
    if not valid:
        check = str((int(check) + rnd.randrange(1, 10)) % 10)
    return body + check


def grouped(number: str, sep: str) -> str:
    if len(number) == 15:  # American Express: 4-6-5
        return sep.join([number[:4], number[4:10], number[10:]])
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4))


def digits(rnd: random.Random, n: int, first: str = "123456789") -> str:
    return rnd.choice(first) + "".join(rnd.choice(string.digits) for _ in range(n - 1))


def mobile(rnd: random.Random) -> str:
    number = rnd.choice(MOBILE_PREFIXES) + digits(rnd, 8, string.digits)
    a, b, c = number[:3], number[3:7], number[7:]
    form = rnd.randrange(10)
    if form == 0:
        return f"{a} {b} {c}"
    if form == 1:
        return f"{a}-{b}-{c}"
    if form == 2:
        return f"+86 {number}"
    if form == 3:
        return f"+86 {a} {b} {c}"
    if form == 4:
        return f"+86-{number}"
    if form == 5:
        return f"0086{number}"
    if form == 6:
        return f"(+86){number}"
    if form == 7:
        return number.translate(str.maketrans(string.digits, "０１２３４５６７８９"))
    return number


def landline(rnd: random.Random) -> str:
    area = rnd.choice(["010", "020", "021", "022", "023", "024", "025", "027", "028", "029", "0755", "0571", "0512"])
    local = digits(rnd, 8 if len(area) == 3 or rnd.random() < 0.7 else 7, "23456789")
    form = rnd.randrange(6)
    if form == 0:
        return f"{area}-{local}"
    if form == 1:
        return f"({area}) {local[:-4]} {local[-4:]}"
    if form == 2:
        return f"{area} {local}"
    if form == 3:
        return f"+86 {area[1:]} {local[:-4]} {local[-4:]}"
    if form == 4:
        return f"{area}-{local[:-4]}-{local[-4:]}"
    return f"{area}{local}"


def international(rnd: random.Random) -> str:
    d = lambda n: digits(rnd, n, string.digits)  # noqa: E731
    return rnd.choice(
        [
            f"+44 20 {d(4)} {d(4)}",
            f"+1 ({rnd.randint(201, 989)}) {rnd.randint(200, 999)}-{d(4)}",
            f"+1 {rnd.randint(201, 989)}-{rnd.randint(200, 999)}-{d(4)}",
            f"+49 30 {d(8)}",
            f"+81 3-{d(4)}-{d(4)}",
            f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"+65 {rnd.choice('689')}{d(3)} {d(4)}",
            f"+852 {rnd.choice('2359')}{d(3)} {d(4)}",
            f"+61 2 {d(4)} {d(4)}",
            f"+4915{d(9)}",
        ]
    )


def north_american(rnd: random.Random) -> str:
    area, exchange, line = rnd.randint(201, 989), rnd.randint(200, 999), digits(rnd, 4, string.digits)
    return rnd.choice(
        [
            f"({area}) {exchange}-{line}",
            f"{area}-{exchange}-{line}",
            f"{area}.{exchange}.{line}",
            f"1-{area}-{exchange}-{line}",
        ]
    )


def email(rnd: random.Random) -> str:
    address = f"{rnd.choice(EMAIL_LOCALS)}@{rnd.choice(EMAIL_DOMAINS)}"
    return address.title() if rnd.random() < 0.1 else address


def ipv4(rnd: random.Random) -> str:
    pick = rnd.randrange(4)
    if pick == 0:
        return f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
    if pick == 1:
        return f"192.168.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
    if pick == 2:
        return f"172.{rnd.randint(16, 31)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
    return f"{rnd.randint(1, 223)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"


def ipv6(rnd: random.Random) -> str:
    prefix = rnd.choice([0x20010DB8 << 96, 0x24008000 << 96, 0xFE80 << 112])
    host = rnd.getrandbits(64) if rnd.random() < 0.6 else rnd.getrandbits(16)
    addr = ipaddress.IPv6Address(prefix | host)
    return addr.exploded if rnd.random() < 0.15 else str(addr)


def passport(rnd: random.Random) -> tuple[str, str]:
    pick = rnd.randrange(6)
    if pick == 0:
        return "E" + rnd.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") + digits(rnd, 7, string.digits), "cn"
    if pick == 5:
        return digits(rnd, 9), "labelled"  # a US or UK passport: nine digits
    return rnd.choice("EEGDSP") + digits(rnd, 8, string.digits), "cn"


def url_credentials(rnd: random.Random) -> str:
    scheme = rnd.choice(["postgres", "postgresql", "mysql", "redis", "https", "ftp", "amqp", "mongodb"])
    user = rnd.choice(["admin", "app", "svc_etl", "root", "deploy", ""]) if scheme == "redis" else None
    user = user if user is not None else rnd.choice(["admin", "app", "svc_etl", "root", "deploy", "zhangwei"])
    password = "".join(rnd.choice(string.ascii_letters + string.digits + "!$*_-") for _ in range(rnd.randint(8, 16)))
    host = rnd.choice(["db.example.com", "10.0.3.7", "redis.internal", "mq.example.cn", "files.example.org"])
    port = rnd.choice(["", ":5432", ":6379", ":3306", ":5672"])
    return f"{scheme}://{user}:{password}@{host}{port}"


# --- templates ---------------------------------------------------------------------------------

PII: list[tuple[str, str, int, Callable[[random.Random], str], list[str]]] = [
    # type, kind, how many, value maker, templates
    (
        "id_card",
        "18",
        110,
        id18,
        [
            "身份证号{v}",
            "身份证号码：{v}，请核对。",
            "证件号 {v}",
            "客户身份证{v}已登记",
            "实名信息 {v} 已通过",
            "{v}",
            "ID card no. {v}",
            "resident ID {v} on file",
            "The customer's ID is {v}.",
        ],
    ),
    (
        "id_card",
        "18-grouped",
        50,
        id18_grouped,
        ["身份证 {v}，请核对", "证件号码：{v}", "ID: {v}", "客户提供的号码 {v} 与系统一致"],
    ),
    (
        "id_card",
        "15",
        20,
        id15,
        ["旧身份证号{v}", "身份证号码（15位）：{v}", "证件号码 {v}（旧证）", "old ID card no. {v}"],
    ),
    (
        "bank_card",
        "",
        150,
        lambda r: (lambda c: r.choice([c, c, grouped(c, " "), grouped(c, "-")]))(card(r)),
        [
            "银行卡号{v}",
            "卡号：{v}，请退款到此卡",
            "退款到{v}",
            "信用卡 {v} 已冻结",
            "完整卡号是{v}。",
            "{v}",
            "Card number {v}",
            "refund to card {v} please",
            "My card is {v}.",
            "charged on {v} yesterday",
        ],
    ),
    (
        "phone",
        "mobile",
        160,
        mobile,
        [
            "客户手机{v}，请回电。",
            "联系电话：{v}",
            "手机号码 {v} 已验证",
            "请拨打{v}联系张经理",
            "收货人：王芳，电话{v}。",
            "我的手机是{v}",
            "Call me at {v}.",
            "mobile: {v}",
            "My number is {v}, thanks.",
            "Tel{v}",
            "（{v}）",
            "号码是{v}吗？",
            "联系人张伟{v}",
            "mobile:{v}",
        ],
    ),
    (
        "phone",
        "landline",
        60,
        landline,
        ["办公室座机{v}，工作日可打。", "公司电话：{v}", "传真 {v}", "Office line {v}", "Tel: {v} (head office)"],
    ),
    (
        "phone",
        "international",
        60,
        international,
        ["Call our desk on {v}.", "Phone: {v}", "WhatsApp {v}", "海外客户电话{v}", "联系方式：{v}（海外）"],
    ),
    ("phone", "north_american", 30, north_american, ["call {v} after 5pm", "Phone {v}", "my cell is {v}."]),
    (
        "email",
        "",
        150,
        email,
        [
            "邮箱{v}",
            "邮箱：{v}，谢谢",
            "请发到{v}。",
            "联系人邮箱{v}（工作日回复）",
            "我的邮箱是{v}",
            "Email me at {v}.",
            "contact: {v}",
            "<{v}>",
            "send it to {v}, thanks",
            "({v})",
            "mailto:{v}",
        ],
    ),
    (
        "ip",
        "v4",
        100,
        ipv4,
        [
            "登录IP{v}异常",
            "服务器地址：{v}",
            "来自{v}的请求被拦截",
            "IP地址 {v}，端口 8080",
            "login from {v} failed",
            "host {v}:443 is down",
            "client ip={v}",
            "Ping {v}.",
            "IP:{v}:8080",
            "网段 {v}/24",
        ],
    ),
    (
        "ip",
        "v6",
        50,
        ipv6,
        ["IPv6地址{v}", "来源 {v}，已封禁", "login from {v} failed", "[{v}]:8443 refused", "peer {v}: timeout"],
    ),
    (
        "passport",
        "",
        50,
        lambda r: passport(r)[0],
        [
            "护照号码：{v}",
            "护照号{v}，有效期至2030年",
            "客户护照 {v} 已核验",
            "passport no. {v}",
            "Passport number: {v}",
        ],
    ),
    (
        "url_credentials",
        "",
        40,
        url_credentials,
        [
            "数据库连接串 {v}/orders",
            "配置里写着{v}，请尽快更换密码",
            "DSN: {v}/app?sslmode=require",
            "use {v} to connect",
        ],
    ),
]


def negatives(rnd: random.Random) -> list[Segment]:
    """Hard negatives: what a careless phone or card rule would mask."""
    out: list[Segment] = []

    def add(category: str, templates: list[str], values: list[str]) -> None:
        for value in values:
            out.append(fill(rnd.choice(templates), value, negative=category))

    add(
        "order_number",
        [
            "订单号：{v}",
            "订单号{v}",
            "Order #{v}",
            "order number {v}",
            "交易单号 {v}",
            "流水号{v}",
            "Order ID: {v}",
            "订单编号 {v}",
        ],
        [digits(rnd, rnd.randint(10, 20)) for _ in range(120)],
    )
    add(
        "tracking_number",
        ["运单号 {v}", "快递单号{v}", "tracking number {v}", "物流单号：{v}"],
        [rnd.choice(["SF", "YT", "JT", "JD"]) + digits(rnd, 13, string.digits) for _ in range(25)]
        + ["75" + digits(rnd, 12, string.digits) for _ in range(15)]
        + ["1Z" + "".join(rnd.choice(string.ascii_uppercase + string.digits) for _ in range(16)) for _ in range(10)]
        + [digits(rnd, rnd.randint(12, 15)) for _ in range(20)],
    )
    stamps = []
    for _ in range(60):
        t = birth(rnd, 2020, 2027)
        hh, mm, ss = rnd.randrange(24), rnd.randrange(60), rnd.randrange(60)
        stamps.append(
            rnd.choice(
                [
                    f"{t:%Y-%m-%d} {hh:02d}:{mm:02d}:{ss:02d}",
                    f"{t:%Y%m%d}{hh:02d}{mm:02d}{ss:02d}",
                    f"{t:%Y/%m/%d} {hh:02d}:{mm:02d}",
                    f"{t:%Y-%m-%d}T{hh:02d}:{mm:02d}:{ss:02d}+08:00",
                    f"{hh:02d}:{mm:02d}:{ss:02d}",
                    str(rnd.randint(1_600_000_000, 1_900_000_000)),
                    str(rnd.randint(1_600_000_000_000, 1_900_000_000_000)),
                ]
            )
        )
    add("timestamp", ["下单时间 {v}", "created at {v}", "时间戳{v}", "updated {v}"], stamps)
    dates = []
    for _ in range(40):
        t = birth(rnd, 1990, 2030)
        dates.append(rnd.choice([f"{t.year}年{t.month}月{t.day}日", f"{t:%d/%m/%Y}", f"{t:%Y.%m.%d}", f"{t:%Y%m%d}"]))
    add("date", ["发货日期 {v}", "on {v}", "{v}到期", "due {v}"], dates)
    versions = []
    for _ in range(40):
        a, b, c = rnd.randint(0, 12), rnd.randint(0, 30), rnd.randint(0, 200)
        versions.append(rnd.choice([f"{a}.{b}.{c}", f"{a}.{b}.{c}", f"10.0.{rnd.randint(10240, 26100)}.{c}"]))
    add("version", ["版本 {v}", "version {v}", "升级到版本{v}后", "app version {v}", "Python {v}", "v{v}"], versions)
    # Four small numbers with dots are an IPv4 address unless the text says they are a version.
    labelled = [".".join(str(rnd.randint(0, 20)) for _ in range(4)) for _ in range(15)]
    add("version", ["版本 {v}", "version {v}", "固件版本：{v}", "v{v}", "build {v}"], labelled)
    amounts = []
    for _ in range(60):
        value = rnd.randint(1, 50_000_000) / 100
        amounts.append(rnd.choice([f"¥{value:,.2f}", f"{value:.2f}元", f"${value:,.2f}", f"￥{value:.2f}"]))
    add("amount", ["金额{v}", "合计 {v}", "refund of {v}", "共计{v}，已支付", "total {v}"], amounts)
    add("amount", ["USD {v}", "人民币 {v} 元"], [f"{rnd.randint(1000, 99_999_999):,}" for _ in range(15)])

    def bad_date_id() -> str:  # a correct check digit over an impossible birth date
        body = rnd.choice(REGIONS) + rnd.choice(["19901315", "19900015", "19900230", "19850431", "20070229"])
        body += digits(rnd, 3, string.digits)
        return body + id_check(body)

    add(
        "invalid_id_card",
        ["身份证号{v}", "证件号 {v}", "ID card no. {v}"],
        [id18(rnd, valid=False) for _ in range(30)]
        + [(lambda v: f"{v[:6]} {v[6:14]} {v[14:]}")(id18(rnd, valid=False)) for _ in range(10)]
        + [bad_date_id() for _ in range(15)],
    )
    add(
        "invalid_bank_card",
        ["卡号{v}", "银行卡 {v}", "card number {v}", "{v}"],
        [card(rnd, valid=False) for _ in range(30)] + [grouped(card(rnd, valid=False), " ") for _ in range(10)],
    )
    add(
        "invalid_ip",
        ["IP {v}", "地址{v}", "host {v}"],
        ["999.1.1.1", "256.10.0.1", "192.168.1", "1.2.3.4.5", "300.300.300.300", "10.0.0.256"] * 3,
    )
    add(
        "invalid_phone",
        ["手机号 {v}（少一位）", "电话{v}", "number {v}"],
        [digits(rnd, 10, "1") for _ in range(10)]
        + ["12" + digits(rnd, 9, string.digits) for _ in range(10)]
        + [rnd.choice(MOBILE_PREFIXES) + digits(rnd, 9, string.digits) for _ in range(10)],
    )
    add("invalid_email", ["邮箱 {v}", "mail {v}"], ["zhang@localhost", "@zhangwei", "name@", "user@@example.com"] * 3)
    add(
        "passport_like_code",
        ["型号 {v}", "产品编码{v}", "批次 {v} 已入库", "SKU {v}"],
        [rnd.choice("EGDSP") + digits(rnd, 8, string.digits) for _ in range(20)],
    )
    add(
        "reference_number",  # shaped like a mobile number, labelled as something else
        ["编号:{v}", "工单号 {v}", "发票号码：{v}", "SKU{v}", "serial no. {v}"],
        [rnd.choice(MOBILE_PREFIXES) + digits(rnd, 8, string.digits) for _ in range(25)],
    )
    add(
        "url_without_password",
        ["clone ftp://{v}/pub", "ssh://{v}:22", "见 https://{v}/path"],
        [
            f"{rnd.choice(['anonymous', 'git', 'deploy'])}@{rnd.choice(['ftp.example.com', 'git.example.cn'])}"
            for _ in range(9)
        ],
    )
    add(
        "other_number",
        ["邮编 {v}", "共 {v} 件", "房间 {v}", "工号 {v}", "page {v}"],
        [str(rnd.randint(1, 999_999)) for _ in range(30)],
    )
    return out


FILLER_ZH = ["您好，", "麻烦处理一下：", "补充信息：", "", "客服记录："]
FILLER_EN = ["Hi, ", "Note: ", "", "Ticket update: "]


def join(rnd: random.Random, segments: list[Segment]) -> dict[str, object]:
    lead = rnd.choice(FILLER_ZH if segments[0].lang == "zh" else FILLER_EN)
    text, spans, negs = lead, [], []
    for i, seg in enumerate(segments):
        if i:
            text += "；" if seg.lang == "zh" else " "
        offset = len(text)
        text += seg.text
        spans += [{**s, "start": int(s["start"]) + offset, "end": int(s["end"]) + offset} for s in seg.spans]  # type: ignore[call-overload]
        negs += [{**n, "start": int(n["start"]) + offset, "end": int(n["end"]) + offset} for n in seg.negatives]  # type: ignore[call-overload]
    return {"text": text, "spans": spans, "negatives": negs}


def build(seed: int = SEED) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    pii: list[Segment] = []
    for pii_type, kind, count, make, templates in PII:
        for _ in range(count):
            value = make(rnd)
            label = "18" if kind == "18-grouped" else kind
            pii.append(fill(rnd.choice(templates), value, pii=(pii_type, label)))
    negs = negatives(rnd)
    rnd.shuffle(pii)
    rnd.shuffle(negs)
    records: list[dict[str, object]] = []
    while pii:
        take = [pii.pop() for _ in range(min(len(pii), rnd.choice([1, 1, 2, 3])))]
        take += [negs.pop() for _ in range(min(len(negs), rnd.choice([0, 1, 1, 2])))]
        rnd.shuffle(take)
        records.append(join(rnd, take))
    while negs:
        records.append(join(rnd, [negs.pop() for _ in range(min(len(negs), rnd.choice([1, 2, 3])))]))
    for r in records:
        for s in r["spans"]:  # type: ignore[attr-defined]
            assert s["start"] < s["end"] <= len(r["text"])  # type: ignore[arg-type]
    return records


def render(records: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


if __name__ == "__main__":
    records = build()
    OUT.write_text(render(records), encoding="utf-8")
    spans = sum(len(r["spans"]) for r in records)  # type: ignore[arg-type, misc]
    negs = sum(len(r["negatives"]) for r in records)  # type: ignore[arg-type, misc]
    print(f"{OUT}: {len(records)} records, {spans} PII spans, {negs} hard negatives")
