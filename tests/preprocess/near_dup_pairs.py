# ruff: noqa: RUF001  (Chinese text is written with full-width punctuation)
"""Generated pairs for measuring the near-duplicate operator: near-duplicates and distinct pairs.

A near-duplicate pair is a ticket and a copy of it with small edits, as tickets get re-filed:
a changed number, a typo or two, a greeting or sign-off added or dropped, punctuation or case
changed. A distinct pair is two tickets written from the same templates and sentence pools (the
hard case: same domain, same phrasing, different content). Chinese and English, half each.
Fixed seed: the same pairs on every run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

EN_SENTENCES = [
    "My order {n} has not arrived and the tracking page has not changed for {d} days.",
    "I was charged twice for invoice {n}, once on the {d}th and again today.",
    "The app crashes when I upload a photo larger than {d} MB from my phone.",
    "Please cancel my subscription before the renewal on the {d}th of next month.",
    "I returned item {n} two weeks ago but the refund has still not reached my card.",
    "The password reset link in your email expires before I can open it.",
    "Our team account shows {d} seats but we only pay for {d2} of them.",
    "The export to CSV stops at row {n} and the file is cut off.",
    "I cannot log in since the update; the page keeps asking for a code.",
    "The delivery address on order {n} is wrong, the street number should be {d}.",
    "Your agent promised a callback within {d} hours, nobody has called.",
    "The discount code from the newsletter is refused at checkout for basket {n}.",
    "The dashboard shows last month's numbers, the report for {d} days is empty.",
    "I need a copy of invoice {n} with our company's tax number on it.",
]
ZH_SENTENCES = [
    "我的订单{n}已经{d}天没有更新物流信息了，请帮忙查一下。",
    "发票{n}被重复扣款两次，第一次是{d}号，第二次是今天。",
    "上传超过{d}MB的图片时应用会闪退，手机已经更新到最新版本。",
    "请在下个月{d}号续费之前帮我取消订阅。",
    "商品{n}两周前已经退回，但是退款还没有到账。",
    "邮件里的重置密码链接还没打开就过期了。",
    "我们团队账户显示有{d}个席位，但我们只购买了{d2}个。",
    "导出表格时在第{n}行就停止了，文件不完整。",
    "更新以后就无法登录，页面一直要求输入验证码。",
    "订单{n}的收货地址写错了，门牌号应该是{d}号。",
    "客服说{d}小时内回电，到现在也没有人联系我。",
    "购物车{n}使用会员优惠券时提示无效。",
    "报表页面显示的是上个月的数据，最近{d}天的报告是空的。",
    "我需要一份带公司税号的发票{n}的复印件。",
]
EN_GREETINGS = ["Hello,", "Hi team,", "Dear support,", "Good morning,"]
EN_SIGNOFFS = ["Thanks.", "Best regards.", "Thank you for your help.", "Cheers."]
ZH_GREETINGS = ["您好，", "客服你好，", "你好，"]
ZH_SIGNOFFS = ["谢谢。", "麻烦尽快处理，谢谢！", "期待回复。"]


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    near_duplicate: bool
    language: str


def _fill(rnd: random.Random, template: str) -> str:
    return template.format(n=rnd.randint(100000, 999999), d=rnd.randint(2, 30), d2=rnd.randint(2, 30))


def _ticket(rnd: random.Random, zh: bool) -> str:
    pool = ZH_SENTENCES if zh else EN_SENTENCES
    sentences = [_fill(rnd, t) for t in rnd.sample(pool, rnd.randint(3, 5))]
    greeting = rnd.choice(ZH_GREETINGS if zh else EN_GREETINGS)
    return ("" if zh else " ").join([greeting, *sentences])


def _edit(rnd: random.Random, text: str, zh: bool) -> str:
    """One or two small edits, as a re-filed ticket has."""
    for _ in range(rnd.randint(1, 2)):
        kind = rnd.choice(["number", "typo", "signoff", "punctuation", "case"])
        if kind == "number":
            digits = [i for i, c in enumerate(text) if c.isdigit()]
            if digits:
                i = rnd.choice(digits)
                text = text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1 :]
        elif kind == "typo" and len(text) > 10:
            i = rnd.randrange(1, len(text) - 2)
            text = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
        elif kind == "signoff":
            text = text + ("" if zh else " ") + rnd.choice(ZH_SIGNOFFS if zh else EN_SIGNOFFS)
        elif kind == "punctuation":
            text = text.replace("。", "！", 1) if zh else text.replace(".", "!", 1)
        else:
            text = text.lower() if not zh else text.replace("，", ",", 1)
    return text


def make_pairs(n: int = 200, seed: int = 11) -> list[Pair]:
    """``n`` near-duplicate pairs and ``n`` distinct pairs, half Chinese and half English."""
    rnd = random.Random(seed)
    pairs: list[Pair] = []
    for i in range(n):
        zh = i % 2 == 0
        base = _ticket(rnd, zh)
        pairs.append(Pair(base, _edit(rnd, base, zh), True, "zh" if zh else "en"))
    for i in range(n):
        zh = i % 2 == 0
        pairs.append(Pair(_ticket(rnd, zh), _ticket(rnd, zh), False, "zh" if zh else "en"))
    return pairs


@dataclass(frozen=True)
class Scores:
    threshold: float
    true_positives: int
    false_positives: int
    false_negatives: int
    above_threshold: int  # pairs whose exact Jaccard reaches the threshold
    found_above_threshold: int  # of those, how many shared an LSH band (the approximate step)

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        return self.true_positives / (self.true_positives + self.false_negatives)

    @property
    def lsh_recall(self) -> float:
        return self.found_above_threshold / self.above_threshold if self.above_threshold else 1.0


def evaluate(pairs: list[Pair], threshold: float) -> Scores:
    """Each pair as the index judges it: a candidate if the two share a band, then exact Jaccard.
    Labels are by construction (an edited copy or not)."""
    from lmforge.preprocess.cleaning import clean_text
    from lmforge.preprocess.near_dup import NearDuplicateIndex, jaccard

    index = NearDuplicateIndex(threshold)
    tp = fp = fn = above = found_above = 0
    for pair in pairs:
        a, b = (index.fingerprint(clean_text(t).text) for t in (pair.a, pair.b))
        candidate = bool(set(a.bands) & set(b.bands))
        similar = jaccard(a.shingles, b.shingles) >= threshold
        above += similar
        found_above += similar and candidate
        detected = candidate and similar
        tp += detected and pair.near_duplicate
        fp += detected and not pair.near_duplicate
        fn += pair.near_duplicate and not detected
    return Scores(threshold, tp, fp, fn, above, found_above)
