"""Dataset versions for trainer tests (``lmforge.devstack.dataset_seed``), and small corpora with a
known right answer."""

from __future__ import annotations

import json
from typing import Any

from lmforge.common.artifacts import ArtifactStore
from lmforge.devstack.dataset_seed import write_dataset

__all__ = ["INTENTS", "chat", "intent_pairs", "pair", "spec", "write_dataset"]

# Five support intents, each with phrasings: some train, the others are held out.
INTENTS: list[tuple[str, list[str], str]] = [
    (
        "password",
        [
            "How do I reset my password?",
            "I forgot my password.",
            "My password does not work anymore.",
            "I cannot log in, my password is wrong.",
            "Can you help me change my password?",
        ],
        "Open Settings, choose Reset password and follow the link we email you.",
    ),
    (
        "refund",
        [
            "Where is my refund?",
            "When will I get my money back?",
            "I returned an item, where is the refund?",
            "My refund has not arrived yet.",
            "How long does a refund take?",
        ],
        "Refunds go back to your original payment method within five business days.",
    ),
    (
        "shipping",
        [
            "Where is my order?",
            "My package has not arrived.",
            "How long does shipping take?",
            "When will my parcel be delivered?",
            "My delivery is late.",
        ],
        "Orders ship within two days and the tracking number is sent by email.",
    ),
    (
        "invoice",
        [
            "Where can I find my invoice?",
            "I need a copy of my invoice.",
            "How do I download an invoice?",
            "Please send me my bill.",
            "Can I get a receipt for my order?",
        ],
        "Invoices are under Billing, then Invoices, in your account.",
    ),
    (
        "cancel",
        [
            "How do I cancel my plan?",
            "I want to cancel my subscription.",
            "Please stop my subscription.",
            "I would like to end my membership.",
            "How can I unsubscribe from the service?",
        ],
        "Cancel any time from Account, then Subscription, then Cancel plan.",
    ),
]


def pair(prompt: str, response: str) -> str:
    return json.dumps({"prompt": prompt, "response": response})


def chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": role, "content": content} for role, content in turns]})


def intent_pairs(*phrasings: int) -> list[str]:
    """One JSON prompt/response record per phrasing (by index) of each intent."""
    return [pair(questions[i], answer) for _, questions, answer in INTENTS for i in phrasings]


def spec(
    store: ArtifactStore, manifest_uri: str, key: str, base: str = "builtin:tiny-gpt2", **hp: Any
) -> dict[str, Any]:
    """A training spec as the executor writes it."""
    return {
        "hyperparameters": hp,
        "base_model": base,
        "dataset_manifest_uri": manifest_uri,
        "artifacts_url": store.url,
        "artifact_key": key,
    }
