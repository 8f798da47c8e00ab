# ruff: noqa: RUF001  (the Chinese tickets are written with full-width CJK punctuation)
"""The demo's domain: customer-support tickets in six intents, with held-out paraphrases.

Each intent has a reference answer, phrasings the synthetic CRM files tickets with (the training
data), and other phrasings that never appear in any record (``held_out``): the demo and the
end-to-end test ask those, so a good score means the model learned the intent, not the text.

An answer matches an intent when its words overlap that intent's reference answer more than any
other's, with a token F1 of at least ``MATCH_F1``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Intent:
    name: str
    answer: str
    phrasings: tuple[str, ...]
    held_out: tuple[str, ...]


INTENTS: tuple[Intent, ...] = (
    Intent(
        "password",
        "Open Settings, choose Reset password and follow the link we email you.",
        (
            "How do I reset my password?",
            "I forgot my password.",
            "My password does not work anymore.",
            "I can't log in, my password is wrong.",
            "How can I change my password?",
            "Help me recover my password.",
            "I need a new password.",
            "Reset my login password please.",
            "Forgot password, please help.",
            "I can't sign in to my account.",
            "How do I get a password reset link?",
            "My account won't accept my password.",
        ),
        (
            "I am locked out of my account because I lost my password.",
            "What are the steps to set a new password?",
            "The login page says my password is incorrect, what now?",
            "I don't remember my password, can you help me get back in?",
        ),
    ),
    Intent(
        "refund",
        "Refunds go back to your original payment method within five business days.",
        (
            "Where is my refund?",
            "When will I get my money back?",
            "I returned an item, where is the refund?",
            "How long does a refund take?",
            "I still have not received my refund.",
            "Has my refund been processed?",
            "I want my money back for the return.",
            "My refund is missing.",
            "I was promised a refund, when does it come?",
            "Money for my return has not come back.",
            "Can you check the status of my refund?",
            "How long until I am refunded?",
        ),
        (
            "I sent the product back last week, when do I see the money?",
            "How many days until the refund reaches my card?",
            "You still owe me money for a returned item.",
            "Is my reimbursement on its way?",
        ),
    ),
    Intent(
        "shipping",
        "Orders ship within two days and the tracking number is sent by email.",
        (
            "Where is my order?",
            "My package has not arrived.",
            "How long does shipping take?",
            "When will my order be delivered?",
            "Can I track my parcel?",
            "My delivery is late.",
            "Where is my package right now?",
            "Is my order on the way?",
            "Has my order shipped yet?",
            "I am still waiting for my delivery.",
            "When does my package arrive?",
            "How can I follow my shipment?",
        ),
        (
            "I ordered on Monday and nothing has come yet.",
            "Has my shipment left the warehouse?",
            "What is the tracking number for my purchase?",
            "How soon will you send out the things I bought?",
        ),
    ),
    Intent(
        "invoice",
        "Invoices are under Billing, then Invoices, in your account.",
        (
            "Where can I find my invoice?",
            "I need a copy of my invoice.",
            "How do I download an invoice?",
            "Can you send me my invoice?",
            "Where are my bills?",
            "I need a receipt for my purchase.",
            "Please email me the invoice.",
            "I can't find the bill for my last order.",
            "I need an invoice for my company.",
            "Where do I get a copy of my bill?",
            "Send the invoice again, please.",
            "Can I see my past invoices?",
        ),
        (
            "My accountant is asking for last month's invoice.",
            "How can I print the invoice for my order?",
            "Where do I see my billing documents?",
            "I lost the invoice you sent me.",
        ),
    ),
    Intent(
        "cancel",
        "Cancel any time from Account, then Subscription, then Cancel plan.",
        (
            "How do I cancel my plan?",
            "I want to cancel my subscription.",
            "Please stop my subscription.",
            "How can I end my membership?",
            "I don't want to be charged every month anymore.",
            "Cancel my account plan please.",
            "I want to stop my plan.",
            "How do I close my subscription?",
            "I want to end my subscription.",
            "Stop charging me, I am leaving.",
            "How do I turn off auto renewal?",
            "Please cancel my membership.",
        ),
        (
            "I would like to stop paying for the service.",
            "How do I unsubscribe from the monthly plan?",
            "Please terminate my subscription today.",
            "What do I do to quit my plan?",
        ),
    ),
    Intent(
        "address",
        "Update your delivery address under Profile, then Addresses, and save it.",
        (
            "How do I change my address?",
            "I moved and need to update my address.",
            "My delivery address is wrong.",
            "Can I edit my shipping address?",
            "Please change the address on my account.",
            "Where do I update my home address?",
            "Send my orders to a new address.",
            "My address changed, how do I edit it?",
            "I moved to a new house.",
            "Update my shipping address please.",
            "How do I change the address for deliveries?",
            "My profile has my old address.",
        ),
        (
            "I have a new apartment, where do I put the new address?",
            "The street on my profile is outdated.",
            "How can I fix the address you deliver to?",
            "I need to correct my postal address.",
        ),
    ),
)
NAMES = ["ann", "bob", "chen", "dana", "eli", "fay", "gus", "hana"]
MATCH_F1 = 0.5


def prompt(question: str) -> str:
    """How a ticket's question is put to the model: the text before the answer in every record."""
    return f"Customer: {question} Agent:"


def make_corpus(n: int = 200, seed: int = 7) -> list[dict[str, Any]]:
    """Support tickets from a CRM: ~10% exact duplicates, some HTML, some emails and phone numbers.

    Only the intents' ``phrasings`` appear; the ``held_out`` ones never do.
    """
    rnd = random.Random(seed)
    records: list[dict[str, Any]] = []
    for i in range(n):
        if records and rnd.random() < 0.1:  # the same ticket filed twice under another id
            dup = dict(rnd.choice(records))
            dup["source_id"] = f"T-{10000 + i}"
            records.append(dup)
            continue
        intent = rnd.choice(INTENTS)
        question = rnd.choice(intent.phrasings)
        name = rnd.choice(NAMES)
        contact = rnd.choice(
            [
                "",
                "",
                f" My email is {name}.{i}@example.com.",
                f" Call me at +1 555-{rnd.randint(100, 999)}-{rnd.randint(1000, 9999)}.",
            ]
        )
        order = f" Order {rnd.randint(10000, 99999)}." if rnd.random() < 0.6 else ""
        text = f"{prompt(question + order + contact)} {intent.answer}"
        if rnd.random() < 0.3:
            text = f"<div><p>{text.replace(' Agent:', '</p><p>Agent:')}</p></div>"
        records.append(
            {
                "source": "crm",
                "source_id": f"T-{10000 + i}",
                "text": text,
                "metadata": {"channel": rnd.choice(["email", "chat", "phone"])},
                "label": intent.name,
            }
        )
    return records


def held_out_questions() -> list[tuple[str, Intent]]:
    """Every held-out question with the intent it belongs to, in a fixed order."""
    return [(q, intent) for intent in INTENTS for q in intent.held_out]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def token_f1(answer: str, reference: str) -> float:
    a, r = Counter(_words(answer)), Counter(_words(reference))
    common = sum((a & r).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def matched_intent(answer: str) -> Intent | None:
    """The intent whose reference answer the answer matches best, or None below ``MATCH_F1``."""
    best = max(INTENTS, key=lambda intent: token_f1(answer, intent.answer))
    return best if token_f1(answer, best.answer) >= MATCH_F1 else None


# --- Chinese tickets with personal data ----------------------------------------------------------
# A second CRM (source ``crm-cn``) files tickets in Chinese, with the personal data Chinese
# business records hold: mobile numbers, resident IDs (GB 11643 check digit), UnionPay cards
# (Luhn), emails written straight after a CJK word; and numbers that are not personal data.
ZH_TOPICS = (
    ("我的退款还没到账", "退款会在五个工作日内退回原支付方式。"),
    ("发票在哪里下载", "发票在账户的账单页面，选择发票即可下载。"),
    ("我想取消订阅", "您可以在账户、订阅里随时取消。"),
    ("包裹一直没有送到", "订单两天内发货，物流单号会通过邮件发送。"),
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _resident_id(rnd: random.Random) -> str:
    region = rnd.choice(["110101", "310104", "440305"])
    born = f"{rnd.randint(1960, 2003)}0{rnd.randint(1, 9)}1{rnd.randint(0, 9)}"
    first17 = f"{region}{born}{rnd.randint(100, 999)}"
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def _unionpay_card(rnd: random.Random) -> str:
    body = "622202" + "".join(str(rnd.randint(0, 9)) for _ in range(12))
    total = sum((2 * int(d) - 9 * (2 * int(d) > 9)) if i % 2 == 0 else int(d) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def chinese_tickets(n: int = 20, seed: int = 11) -> list[tuple[dict[str, Any], list[str]]]:
    """``n`` Chinese tickets, each with the personal data values written in it (what masking must remove)."""
    rnd = random.Random(seed)
    tickets = []
    for i in range(n):
        question, answer = ZH_TOPICS[i % len(ZH_TOPICS)]
        mobile = f"1{rnd.choice('3589')}{rnd.randint(100000000, 999999999)}"
        resident_id, card = _resident_id(rnd), _unionpay_card(rnd)
        email = f"{rnd.choice(NAMES)}.{i}@example.cn"
        spaced_card = " ".join(card[j : j + 4] for j in range(0, len(card), 4))
        text = (
            f"客户：{question}，订单号2026{rnd.randint(10000000, 99999999)}，下单时间2026-11-{rnd.randint(10, 24)} "
            f"{rnd.randint(10, 23)}:{rnd.randint(10, 59)}。手机+86 {mobile[:3]} {mobile[3:7]} {mobile[7:]}，"
            f"身份证{resident_id}，银行卡{spaced_card}，邮箱{email}，金额￥{rnd.randint(100, 999)}.00。客服：{answer}"
        )
        record = {"source": "crm-cn", "source_id": f"C-{20000 + i}", "text": text, "metadata": {"channel": "chat"}}
        tickets.append((record, [mobile, resident_id, card, email]))
    return tickets
