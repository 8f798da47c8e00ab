# ruff: noqa: RUF001  (the Chinese tickets are written with full-width CJK punctuation)
"""Curation: preprocess's default recipe per record, against datatrove on the same records.

    .venv/bin/python bench/curation.py [--records 20000] [--seed 5] [--peer-python .venv-peer/bin/python]

Both sides read the same generated records (mixed Chinese and English support tickets with PII,
HTML, mojibake, exact and near duplicates, and junk the filters should drop), one after the
other, pinned to the same single CPU core:

- **lmforge**: ``RawRecordHandler.handle_batch``, what preprocess's Kafka consumer calls with a
  partition's queued ``raw-data`` records (``--batch-size``, default the consumer's
  ``max_batch_size``; 1: one record at a time), minus Kafka: the default recipe (cleaning,
  filters, Chinese and English PII masking), exact dedup, the streaming near-duplicate check
  against the LSH index in the service's SQLite database (migrated as the service migrates it),
  and the cleaned records stored with their outbox rows, one transaction per batch. Records/s in
  one process on one core, so records/s is records/s/core.
- **datatrove** (``--peer-python``, its own virtualenv, ``make .venv-peer``): the closest
  equivalent operators (docs/benchmarks.md, "Curation", lists them), then its MinHash dedup, all
  four stages, one task after the other in one process. It runs in a subprocess (this file again,
  with ``--run-peer``); only its processing is timed, not the interpreter's start or its imports.

Last line: ``curation: <lmforge records/s/core> vs datatrove <records/s/core>, ratio <r>``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"

# --- the records ---------------------------------------------------------------------------------
# Support tickets from two CRMs, English and Chinese, built from parts so that few share more than
# a template; then HTML, mojibake, full-width digits, control characters and whitespace noise on
# some, exact and near copies of earlier ones, and junk: too short, symbols, digits, one phrase
# repeated, placeholder text, other languages.

EN_GREETINGS = ("Hi,", "Hello,", "Hello team,", "Dear support,", "Good morning,", "Hey there,")
EN_PRODUCTS = (
    "the wireless earbuds", "a 27-inch monitor", "the standing desk", "two phone cases", "the espresso machine",
    "a pair of running shoes", "the kids' bike", "a winter jacket", "the robot vacuum", "three USB-C cables",
    "the air fryer", "a gaming keyboard", "the baby monitor", "a yoga mat", "the smart watch", "a camping tent",
    "the office chair", "a set of kitchen knives", "the e-reader", "a Bluetooth speaker",
)  # fmt: skip
EN_TRIED = (
    "logging out and back in", "clearing the browser cache", "the mobile app instead of the website",
    "calling the hotline twice", "the live chat, which timed out", "another card", "resetting the app",
    "waiting another week as you suggested",
)  # fmt: skip
EN_SIGNOFFS = ("Thanks, {name}.", "Regards, {name}", "Best, {name}", "Cheers", "Thank you!", "{name}")
EN_NAMES = ("Ann", "Bob", "Chen Wei", "Dana", "Eli", "Fay", "Gus", "Hana", "Li Na", "Wang Fang", "Omar", "Priya")
ZH_TOPICS_MORE = (
    ("收到的商品有破损", "很抱歉给您带来不便，请上传照片，我们为您安排换货。"),
    ("我要修改收货地址", "请在个人资料的地址管理中修改并保存。"),
    ("账号登录不上", "请在登录页选择忘记密码，按短信提示重置。"),
    ("优惠券无法使用", "优惠券需满足使用门槛，并在有效期内使用。"),
    ("重复扣款了两次", "多扣的款项会在三个工作日内原路退回。"),
    ("会员自动续费了", "您可以在账户、订阅中关闭自动续费，本期费用可申请退款。"),
    ("快递显示已签收但我没收到", "我们已联系快递核实，二十四小时内给您回复。"),
    ("想开增值税专用发票", "请在订单详情页填写公司名称和税号申请专票。"),
)
ZH_GREETINGS = ("您好，", "你好，", "客服你好，", "在吗？", "")
ZH_PRODUCTS = (
    "蓝牙耳机", "二十七寸显示器", "升降桌", "手机壳", "咖啡机", "跑步鞋", "儿童自行车", "羽绒服", "扫地机器人",
    "数据线", "空气炸锅", "机械键盘", "婴儿监视器", "瑜伽垫", "智能手表", "帐篷", "办公椅", "刀具套装",
)  # fmt: skip
ZH_SIGNOFFS = ("谢谢！", "麻烦尽快处理。", "辛苦了。", "急，谢谢。", "")
JUNK = (
    "ok", "?", "好", "thx", "1", "...", "嗯",
    "!!!!!! ??? $$$$ #### **** @@@@ %%%%", "【】【】【】。。。！！！？？？……", "=====>>>>> <<<<<===== ----",
    "1234567890 0987654321 1122334455 6677889900", "2026 2026 2026 2026 2026 0000 1111",
    "refund " * 30, "退款退款退款" * 12, "call me call me call me call me call me call me call me call me",
    "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore",
    "Lorem Ipsum is simply dummy text of the printing and typesetting industry, order 58213.",
    "Bonjour, je voudrais savoir pourquoi ma commande n'est toujours pas arrivée après deux semaines.",
    "Guten Tag, meine Bestellung ist leider noch nicht angekommen und ich warte schon zwei Wochen.",
    "こんにちは、注文した商品がまだ届いていません。確認していただけますでしょうか。よろしくお願いします。",
    "Здравствуйте, мой заказ до сих пор не доставлен, хотя прошло уже две недели с момента оплаты.",
)  # fmt: skip
_FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def _digits(rnd: random.Random, n: int) -> str:
    return str(rnd.randint(1, 9)) + "".join(str(rnd.randint(0, 9)) for _ in range(n - 1))


def _mobile(rnd: random.Random, *, spaced: bool | None = None) -> str:
    m = f"1{rnd.choice('3456789')}{_digits(rnd, 9)}"
    style = rnd.randrange(4) if spaced is None else (1 if spaced else 0)
    return (m, f"{m[:3]} {m[3:7]} {m[7:]}", f"+86 {m[:3]}-{m[3:7]}-{m[7:]}", f"+86{m}")[style]


def _ip(rnd: random.Random) -> str:
    if rnd.random() < 0.2:
        return f"2001:db8:{rnd.randint(1, 0xFFFF):x}::{rnd.randint(1, 0xFFFF):x}"
    first = rnd.choice([10, 36, 58, 101, 112, 183, 192, 203])
    return f"{first}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"


def _email(rnd: random.Random, name: str, i: int) -> str:
    local = name.lower().replace(" ", rnd.choice([".", "_", ""]))
    suffix = rnd.choice(["", str(i % 1000), str(rnd.randint(70, 99))])
    return f"{local}{suffix}@{rnd.choice(['qq.com', '163.com', 'example.com', 'mail.example.cn', 'outlook.com'])}"


def _clock(rnd: random.Random) -> str:
    return f"{rnd.randint(8, 23)}:{rnd.randint(10, 59)}"


def _date(rnd: random.Random) -> str:
    return f"2026-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"


def _english(rnd: random.Random, i: int) -> tuple[str, str]:
    from lmforge.devstack.support_corpus import INTENTS, _resident_id, _unionpay_card

    intent = rnd.choice(INTENTS)
    name = rnd.choice(EN_NAMES)
    details = [
        lambda: f"I ordered {rnd.choice(EN_PRODUCTS)} on {_date(rnd)}, order {_digits(rnd, rnd.choice([6, 8, 12]))}.",
        lambda: f"The charge was ${rnd.randint(5, 900)}.{rnd.randint(0, 99):02d}.",
        lambda: f"Tracking number SF{_digits(rnd, 12)} has not moved since {_date(rnd)}.",
        lambda: f"I already tried {rnd.choice(EN_TRIED)}.",
        lambda: f"My email is {_email(rnd, name, i)}.",
        lambda: f"You can reach me on {_mobile(rnd)}.",
        lambda: f"Or call +1 ({rnd.randint(201, 989)}) 555-{rnd.randint(1000, 9999)}.",
        lambda: f"I logged in from {_ip(rnd)} this morning and it still failed.",
        lambda: (
            f"Please refund to card {' '.join(c[k : k + 4] for c in [_unionpay_card(rnd)] for k in range(0, 19, 4))}."
        ),
        lambda: f"For the customs form, my ID card number is {_resident_id(rnd)}.",
        lambda: f"This is my {rnd.choice(['second', 'third', 'fourth'])} message about it, ticket {_digits(rnd, 7)}.",
        lambda: f"It has been {rnd.randint(2, 30)} days and nobody has answered.",
    ]
    parts = [rnd.choice(EN_GREETINGS)] if rnd.random() < 0.5 else []
    parts.append(rnd.choice(intent.phrasings))
    parts += [d() for d in rnd.sample(details, rnd.randint(1, 4))]
    if rnd.random() < 0.5:
        parts.append(rnd.choice(EN_SIGNOFFS).format(name=name))
    text = f"Customer: {' '.join(parts)} Agent: {intent.answer}"
    if rnd.random() < 0.3:
        text += f" Ticket {_digits(rnd, 6)} updated."
    return text, intent.name


def _chinese(rnd: random.Random, i: int) -> tuple[str, str]:
    from lmforge.devstack.support_corpus import NAMES, ZH_TOPICS, _resident_id, _unionpay_card

    question, answer = rnd.choice(ZH_TOPICS + ZH_TOPICS_MORE)
    card = _unionpay_card(rnd)
    details = [
        lambda: f"订单号{_digits(rnd, rnd.choice([12, 16, 18]))}，下单时间{_date(rnd)} {_clock(rnd)}。",
        lambda: f"金额￥{rnd.randint(9, 9999)}.{rnd.randint(0, 99):02d}。",
        lambda: f"我的手机{_mobile(rnd)}，",
        lambda: f"手机号{_mobile(rnd).translate(_FULL_WIDTH)}。",
        lambda: f"身份证{_resident_id(rnd)}。",
        lambda: f"银行卡{' '.join(card[k : k + 4] for k in range(0, 19, 4))}。",
        lambda: f"邮箱{_email(rnd, rnd.choice(NAMES), i)}，",
        lambda: f"物流单号SF{_digits(rnd, 12)}，",
        lambda: f"登录IP是{_ip(rnd)}。",
        lambda: f"买的是{rnd.choice(ZH_PRODUCTS)}，",
        lambda: f"已经等了{rnd.randint(2, 30)}天了，",
        lambda: f"之前打过{rnd.randint(2, 5)}次客服电话都没人处理。",
    ]
    parts = [rnd.choice(ZH_GREETINGS), question, "。"]
    parts += [d() for d in rnd.sample(details, rnd.randint(1, 4))]
    parts.append(rnd.choice(ZH_SIGNOFFS))
    return f"客户：{''.join(parts)}客服：{answer}", ""


def _html(rnd: random.Random, text: str) -> str:
    body = text.replace("&", "&amp;").replace("<", "&lt;")
    if " Agent:" in body:
        body = body.replace(" Agent:", "</p><p>Agent:")
    elif "客服：" in body:
        body = body.replace("客服：", "</p><p>客服：")
    style = rnd.randrange(4)
    if style == 0:
        return f"<div><p>{body}</p></div>"
    if style == 1:
        return f"<p>{body}</p><br/><p>&nbsp;</p>"
    if style == 2:
        return f'<html><head><style>p {{color: #333}}</style></head><body><p class="msg">{body}</p></body></html>'
    return f"<div><p>{body}</p><script>track('ticket');</script></div>"


def _mojibake(text: str) -> str:
    raw = text.encode("utf-8")
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _near_copy(rnd: random.Random, text: str) -> str:
    """One or two small edits: a typo, a changed digit, a sign-off or punctuation, case."""
    for _ in range(rnd.randint(1, 2)):
        edit = rnd.randrange(5)
        if edit == 0 and len(text) > 20:  # swap two neighbouring characters
            k = rnd.randrange(10, len(text) - 2)
            text = text[:k] + text[k + 1] + text[k] + text[k + 2 :]
        elif edit == 1:
            positions = [k for k, c in enumerate(text) if "0" <= c <= "9"]
            if positions:
                k = rnd.choice(positions)
                text = text[:k] + str((int(text[k]) + 1) % 10) + text[k + 1 :]
        elif edit == 2:
            text += rnd.choice([" Thanks!", " 谢谢。", " Please hurry.", "！"])
        elif edit == 3:
            text = text.replace("。", "！", 1) if "。" in text else text.replace(".", "!", 1)
        else:
            text = text.replace("Customer:", "customer:", 1)
    return text


def make_records(n: int, seed: int = 5) -> list[dict[str, Any]]:
    """``n`` records, deterministic for a seed: 80% tickets, about half English and half Chinese
    (some of them the demo's, from ``lmforge.devstack.support_corpus``), 10% near copies and 5%
    exact copies of earlier tickets, 5% junk. Each says what it was made as (``metadata.kind``)."""
    from lmforge.devstack.support_corpus import chinese_tickets, make_corpus

    rnd = random.Random(seed)
    demo_en = iter([r["text"] for r in make_corpus(n, seed=seed)])  # each used once, in order
    demo_zh = iter([r["text"] for r, _ in chinese_tickets(n, seed=seed)])
    originals: list[str] = []
    records = []
    for i in range(n):
        roll = rnd.random()
        label = ""
        if originals and roll < 0.05:
            kind, text = "exact_copy", rnd.choice(originals)
            if rnd.random() < 0.3:
                text = text.replace(" ", "  ", 2) + "\n"  # the same once whitespace is collapsed
        elif originals and roll < 0.15:
            kind, text = "near_copy", _near_copy(rnd, rnd.choice(originals))
        elif roll < 0.20:
            kind, text = "junk", rnd.choice(JUNK)
        else:
            source = rnd.random()
            if source < 0.05:
                kind, text = "demo_en", next(demo_en)
            elif source < 0.08:
                kind, text = "demo_zh", next(demo_zh)
            elif source < 0.54:
                kind, (text, label) = "en", _english(rnd, i)
            else:
                kind, (text, label) = "zh", _chinese(rnd, i)
            noise = rnd.random()
            if noise < 0.15:
                text = _html(rnd, text)
            elif noise < 0.18:
                text = _mojibake(text)
            elif noise < 0.21:
                k = rnd.randrange(len(text))
                text = text[:k] + rnd.choice(["\u200b", "\ufeff", "\x00", "\u00ad"]) + text[k:]
            elif noise < 0.30:
                text = text.replace(" ", rnd.choice(["  ", "\t", " \n "]), 3)
            originals.append(text)
        records.append(
            {
                "source": "crm-cn" if kind in ("zh", "demo_zh") else "crm",
                "source_id": f"B-{i:06d}",
                "text": text,
                "label": label or None,
                "metadata": {"kind": kind},
            }
        )
    return records


# --- lmforge -------------------------------------------------------------------------------------


async def run_lmforge(records: list[dict[str, Any]], workdir: Path, batch_size: int) -> dict[str, Any]:
    """Every record through preprocess's ``raw-data`` handler, in batches of ``batch_size`` as the
    consumer hands them over; the database is a fresh SQLite file migrated as the service migrates it."""
    from datetime import UTC, datetime

    from opentelemetry import trace
    from sqlalchemy import func, select

    from lmforge.common.db import Database, OutboxRelay, upgrade_database
    from lmforge.common.events import Event, RawRecordV1, content_hash, record_key
    from lmforge.common.kafka import BatchItem, EventProducer, InboundMessage
    from lmforge.common.settings import KafkaSettings
    from lmforge.preprocess.app import MIGRATIONS
    from lmforge.preprocess.handlers import RawRecordHandler
    from lmforge.preprocess.models import cleaned_records, dropped_records, outbox
    from lmforge.preprocess.near_dup import NearDuplicateIndex
    from lmforge.preprocess.recipe import default_recipe

    url = f"sqlite+aiosqlite:///{workdir / 'preprocess.db'}"
    await upgrade_database(url, MIGRATIONS)
    db = Database(url)
    recipe = default_recipe()
    threshold = recipe.near_dup_threshold
    assert threshold is not None, "the default recipe has a near_dup step"
    relay = OutboxRelay(outbox, db.sessions, EventProducer(KafkaSettings(), source="bench"))  # woken, never run
    handle = RawRecordHandler(db, "bench", relay, recipe.pipeline(), NearDuplicateIndex(threshold))
    messages = []
    now = datetime.now(UTC)
    for offset, r in enumerate(records):
        raw = RawRecordV1(
            record_id=record_key(r["source"], r["source_id"]),
            source=r["source"],
            source_id=r["source_id"],
            text=r["text"],
            content_hash=content_hash(r["text"]),
            label=r["label"],
            metadata=r["metadata"],
            ingested_at=now,
        )
        value, headers = Event(data=raw, source="lmforge/ingest").to_kafka()
        messages.append(InboundMessage("raw-data", 0, offset, raw.record_id.encode(), value, tuple(headers), 0))
    await handle(messages[0])  # the first record loads py3langid's model and opens the connection
    cpu0, wall0 = time.process_time(), time.perf_counter()
    timed = messages[1:]
    if batch_size == 1:
        for msg in timed:
            await handle(msg)
    else:
        for i in range(0, len(timed), batch_size):
            await handle.handle_batch([BatchItem(m, trace.INVALID_SPAN) for m in timed[i : i + batch_size]])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    async with db.sessions() as s:
        kept = (await s.execute(select(func.count()).select_from(cleaned_records))).scalar_one()
        by_reason = select(dropped_records.c.reason, func.count()).group_by(dropped_records.c.reason)
        reasons: dict[str, int] = {reason: n for reason, n in (await s.execute(by_reason)).all()}
    await db.dispose()
    return {"records": len(timed), "seconds": wall, "cpu_seconds": cpu, "kept": kept, "dropped": reasons}


# --- datatrove (runs in its own virtualenv: only the standard library and datatrove here) -------

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"


def run_peer(input_file: Path, workdir: Path) -> dict[str, Any]:
    """datatrove's closest equivalents of the default recipe, then MinHash dedup (signatures,
    buckets, clusters, filter), each task run in this process, one after the other, as its
    ``LocalPipelineExecutor`` runs a rank (``_run_for_rank``: each step fed the previous one's
    output); the executor's process pool, manager and log files are left out."""
    import re
    from collections import deque

    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import (
        GopherQualityFilter,
        GopherRepetitionFilter,
        LambdaFilter,
        RegexFilter,
    )
    from datatrove.pipeline.formatters import FTFYFormatter, PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.logging import logger
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    logger.remove()  # its per-step log lines would go to stderr; nothing here reads them

    token = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")

    class CjkWords(WordTokenizer):
        """Each CJK character a word, other runs split at whitespace: what lmforge's token filters
        count. datatrove's own tokenizers for en and zh are spaCy (zh with jieba), one language
        per step, which a mixed stream with no language ID cannot choose between."""

        def word_tokenize(self, text: str) -> list[str]:
            return token.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    class Characters(CjkWords):
        """Characters, so MinHash shingles are character 5-grams, as lmforge's are."""

        def word_tokenize(self, text: str) -> list[str]:
            return list(text)

    words, chars = CjkWords(), Characters()
    # lmforge's shingles and banding: character 5-grams of the case-folded text with whitespace
    # collapsed (datatrove's default also drops punctuation and turns every number into 0, which
    # makes tickets that differ only in their order numbers identical), 10 bands of 12 rows.
    shingle_text = TextNormConfig(remove_punctuation=False, norm_unicode_diacritics=False, norm_numbers=False)
    minhash = MinhashConfig(n_grams=5, num_buckets=10, hashes_per_bucket=12, seed=1, norm_config=shingle_text)
    cleaned, sigs, buckets, remove, final = (workdir / d for d in ("cleaned", "sigs", "buckets", "remove", "final"))
    curate = [
        JsonlReader(str(input_file.parent), glob_pattern=input_file.name, id_key="source_id"),
        FTFYFormatter(normalization="NFKC"),  # mojibake, HTML entities, control characters, NFKC
        LambdaFilter(lambda doc: 2 <= len(doc.text) <= 100_000),
        GopherQualityFilter(
            min_doc_words=2,
            max_doc_words=None,
            min_avg_word_length=None,  # a Chinese word here is one character
            max_avg_word_length=None,
            max_non_alpha_words_ratio=0.5,  # digits and symbols: at least half the words hold a letter
            min_stop_words=None,  # English stop words only
            language=words,  # a language code or a WordTokenizer (load_word_tokenizer takes either)
        ),
        GopherRepetitionFilter(top_n_grams=(), dup_n_grams=((3, 0.5),), language=words),
        RegexFilter(r"(?i)\blorem ipsum\b"),
        PIIFormatter(only_remove_public_ips=False),  # every IP, as lmforge masks
        JsonlWriter(str(cleaned), output_filename="${rank}.jsonl", compression=None),
        MinhashDedupSignature(str(sigs), config=minhash, language=chars),
    ]
    stages: list[tuple[str, list[Any], int]] = [
        ("curate+signatures", curate, 1),
        ("buckets", [MinhashDedupBuckets(str(sigs), str(buckets), config=minhash)], minhash.num_buckets),
        ("clusters", [MinhashDedupCluster(str(buckets), str(remove), config=minhash)], 1),
        (
            "filter",
            [
                JsonlReader(str(cleaned), id_key="id"),
                MinhashDedupFilter(str(remove)),
                JsonlWriter(str(final), output_filename="${rank}.jsonl", compression=None),
            ],
            1,
        ),
    ]
    seconds: dict[str, float] = {}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for name, steps, tasks in stages:
        started = time.perf_counter()
        for rank in range(tasks):
            data = None
            for step in steps:
                data = step(data, rank, tasks)
            if data is not None:
                deque(data, maxlen=0)
        seconds[name] = time.perf_counter() - started
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    def count(step: Any, key: str) -> int:
        return int(step.stats.stats[key].total)

    dropped = {
        "char_length": count(curate[2], "dropped"),
        "gopher_quality": count(curate[3], "dropped"),
        "gopher_repetition": count(curate[4], "dropped"),
        "regex": count(curate[5], "dropped"),
        "minhash": count(stages[3][1][1], "dropped"),
    }
    kept = count(stages[3][1][1], "forwarded")
    records = count(curate[0], "documents")
    return {
        "records": records,
        "seconds": wall,
        "cpu_seconds": cpu,
        "stages": seconds,
        "kept": kept,
        "dropped": dropped,
    }


def peer(records_file: Path, workdir: Path, python: Path) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    done = subprocess.run(
        [str(python), __file__, "--run-peer", str(records_file), str(workdir)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"datatrove run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- main ----------------------------------------------------------------------------------------


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--peer-python", type=Path, default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--cpu", type=int, help="the core both sides are pinned to (default: the last one allowed)")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="records per handler call (default: the consumer's max_batch_size; 1: one at a time)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder (databases, peer output)")
    parser.add_argument("--run-peer", nargs=2, type=Path, metavar=("RECORDS", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_peer:
        print(json.dumps(run_peer(*args.run_peer)))
        return
    if not args.peer_python.exists():
        sys.exit(f"curation: no datatrove environment at {args.peer_python}: run `make .venv-peer` first")

    import asyncio
    import shutil

    from lmforge.common.settings import KafkaSettings

    batch_size = args.batch_size or KafkaSettings().max_batch_size

    # One core for both sides, the peer's subprocess included (it inherits the mask), set before
    # any thread starts so that aiosqlite's worker thread shares it.
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})

    records = make_records(args.records, args.seed)
    kinds = Counter(r["metadata"]["kind"] for r in records)
    langs = sum(1 for r in records if r["source"] == "crm-cn")
    print(f"records: {len(records)} (seed {args.seed}; {langs} from the Chinese CRM): {_counts(kinds)}")
    workdir = Path(tempfile.mkdtemp(prefix="lmforge-curation-"))
    try:
        records_file = workdir / "records.jsonl"
        with records_file.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        (workdir / "lmforge").mkdir()
        (workdir / "peer").mkdir()
        ours = asyncio.run(run_lmforge(records, workdir / "lmforge", batch_size))
        theirs = peer(records_file, workdir / "peer", args.peer_python)
    finally:
        if args.keep:
            print(f"working folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    ours_rate = ours["records"] / ours["seconds"]
    theirs_rate = theirs["records"] / theirs["seconds"]
    print(
        f"lmforge: {ours['records']} records in {ours['seconds']:.2f} s ({ours['cpu_seconds']:.2f} s CPU), "
        f"kept {ours['kept']}, dropped {sum(ours['dropped'].values())}: {_counts(ours['dropped'])}"
    )
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in theirs["stages"].items())
    print(
        f"datatrove: {theirs['records']} records in {theirs['seconds']:.2f} s ({theirs['cpu_seconds']:.2f} s CPU; "
        f"{stages}), kept {theirs['kept']}, dropped {sum(theirs['dropped'].values())}: {_counts(theirs['dropped'])}"
    )
    print(f"one process each, pinned to core {cpu}: records/s is records/s/core; lmforge batches of {batch_size}")
    ours_cpu, theirs_cpu = ours["records"] / ours["cpu_seconds"], theirs["records"] / theirs["cpu_seconds"]
    print(
        f"by CPU time (less sensitive to other processes on the core): lmforge {ours_cpu:.0f} records/CPU-s "
        f"vs datatrove {theirs_cpu:.0f}, ratio {ours_cpu / theirs_cpu:.2f}"
    )
    print(
        f"curation: {ours_rate:.0f} records/s/core vs datatrove {theirs_rate:.0f} records/s/core, "
        f"ratio {ours_rate / theirs_rate:.2f}"
    )


if __name__ == "__main__":
    main()
