"""Training runs on the maintained stack (transformers' Trainer, TRL's SFTTrainer, PEFT): each
task and method trains the builtin tiny GPT-2 for real, for seconds, and the metric has to move
the right way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.events import Hyperparameters, TrainingRequestedV1
from lmforge.trainer.bases import BaseModelError
from lmforge.trainer.data import DataError
from lmforge.trainer.train import TrainingRefused, train

from .corpus import INTENTS, chat, intent_pairs, pair, spec, write_dataset

QA = [("What colour is the sky?", "Blue."), ("What is two plus two?", "Four."), ("Where do fish live?", "Water.")]


def progress_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"step"')]


def greedy(model_dir: Path, prompt: str, chat_turns: bool = True, max_new_tokens: int = 12) -> str:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if chat_turns:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = prompt
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return str(tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)).strip()


def test_continued_pretraining_learns_the_text_and_ships_its_tokenizer(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    texts = [f"Customer: question {i % 3}? Agent: answer {i % 3}." for i in range(24)]
    manifest = write_dataset(store, "plain", {"train": texts, "val": texts[:4], "test": texts[:2]})
    result = train(spec(store, manifest, "models/m/r1", max_steps=40, eval_every=20, batch_size=8, max_seq_len=32))
    m = result["metrics"]
    assert result["artifact_layout"] == "full"
    assert m["steps"] == 40 and m["train_loss"] < m["train_loss_first"] / 3, m
    assert 1 < m["val_perplexity"] < 5
    files = store.list("models/m/r1")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert f"models/m/r1/{name}" in files
    generation = json.loads(store.read_bytes("models/m/r1/generation_config.json"))
    assert len(generation["eos_token_id"]) == 2  # EOS and the chat template's end of turn


def test_sft_learns_the_responses_only_and_answers_end_their_turn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    records = [pair(q, a) for q, a in QA] * 6 + [
        chat(("system", "Be brief."), ("user", q), ("assistant", a)) for q, a in QA
    ]
    manifest = write_dataset(store, "qa", {"train": records, "val": records[:3], "test": records[:3]})
    seen: dict[str, Any] = {}

    def inspect(trainer: Any) -> None:
        row = trainer.train_dataset[0]
        seen["learned"] = trainer.processing_class.decode(
            [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        )
        seen["all"] = trainer.processing_class.decode(row["input_ids"])

    hp = {"task": "sft", "max_steps": 80, "eval_every": 40, "batch_size": 8, "max_seq_len": 48, "learning_rate": 5e-3}
    result = train(spec(store, manifest, "models/m/sft", **hp), on_trainer=inspect)
    # The prompt is context, never a target: only the answer and the end of its turn are learned.
    assert seen["all"].startswith("<|im_start|>user\nWhat colour is the sky?<|im_end|>\n<|im_start|>assistant\n")
    assert seen["learned"] == "Blue.<|im_end|>\n"
    lines = progress_lines(capsys.readouterr().out)
    losses = [line["loss"] for line in lines if "loss" in line]
    assert losses[-1] < losses[0] / 4, losses
    assert [line["step"] for line in lines if "eval_loss" in line] == [40, 80]
    model_dir = store.get_dir("models/m/sft", tmp_path / "model")
    answers = [greedy(model_dir, q) for q, _ in QA]
    assert sum(answer == a for answer, (_, a) in zip(answers, QA, strict=True)) >= 2, answers
    assert result["metrics"]["train_records"] == len(records)


def test_sft_on_plain_text_splits_at_the_response_template(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    texts = [f"Customer: {q} Agent: {a}" for q, a in QA] * 8 + ["a ticket with no agent turn"]
    manifest = write_dataset(store, "tickets", {"train": texts, "val": texts[:3]})
    seen: dict[str, str] = {}

    def inspect(trainer: Any) -> None:
        row = trainer.train_dataset[0]
        learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        seen["learned"] = trainer.processing_class.decode(learned)

    hp = {"task": "sft", "response_template": " Agent:", "max_steps": 60, "eval_every": 30, "batch_size": 8}
    result = train(spec(store, manifest, "models/m/t", **hp, max_seq_len=40, learning_rate=5e-3), on_trainer=inspect)
    assert seen["learned"] == " Blue.<|endoftext|>"
    assert result["metrics"]["skipped_train_no_response_template"] == 1
    assert result["metrics"]["train_loss"] < result["metrics"]["train_loss_first"] / 4
    model_dir = store.get_dir("models/m/t", tmp_path / "model")
    assert greedy(model_dir, "Customer: What is two plus two? Agent:", chat_turns=False) == "Four."


def test_lora_trains_an_adapter_shipped_with_its_base(tmp_path: Path) -> None:
    from peft import PeftModel

    store = ArtifactStore(str(tmp_path / "artifacts"))
    texts = [f"Customer: question {i % 3}? Agent: answer {i % 3}." for i in range(24)]
    manifest = write_dataset(store, "plain", {"train": texts, "val": texts[:4]})
    hp = {"method": "lora", "lora": {"r": 8, "alpha": 16}, "max_steps": 30, "eval_every": 15, "batch_size": 8}
    result = train(spec(store, manifest, "models/m/lora", **hp, max_seq_len=32, learning_rate=0.05))
    m = result["metrics"]
    assert result["artifact_layout"] == "lora_adapter"
    assert m["trainable_parameters"] < m["parameters"] / 10
    assert m["train_loss"] < m["train_loss_first"] - 0.3, m
    local = store.get_dir("models/m/lora", tmp_path / "lora")
    assert json.loads((local / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    assert (local / "base" / "model.safetensors").is_file() and (local / "tokenizer.json").is_file()
    # What a serving runtime does: load base/, apply the adapter, merge. The merged model is the trained one.
    base = AutoModelForCausalLM.from_pretrained(local / "base")
    merged = PeftModel.from_pretrained(base, local).merge_and_unload().eval()
    untouched = AutoModelForCausalLM.from_pretrained(local / "base").eval()
    tok = AutoTokenizer.from_pretrained(local)
    ids = tok(texts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        tuned_loss = float(merged(ids, labels=ids).loss)
        base_loss = float(untouched(ids, labels=ids).loss)
    assert tuned_loss < base_loss - 0.3


def test_schedule_warmup_and_gradient_accumulation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    texts = [f"line {i} of the text" for i in range(32)]
    manifest = write_dataset(store, "plain", {"train": texts, "val": texts[:4]})
    hp = {
        "lr_scheduler": "cosine",
        "warmup_steps": 4,
        "learning_rate": 1e-3,
        "gradient_accumulation_steps": 2,
        "weight_decay": 0.01,
        "max_steps": 12,
        "eval_every": 12,
        "log_every": 1,
        "batch_size": 4,
        "max_seq_len": 16,
        "seed": 7,
    }
    train(spec(store, manifest, "models/m/s", **hp))
    lines = [line for line in progress_lines(capsys.readouterr().out) if "learning_rate" in line]
    lrs = [line["learning_rate"] for line in lines]
    # Four warmup steps up to the peak (each line is the rate after its step), then the cosine down.
    assert lrs[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4:] == sorted(lrs[4:], reverse=True) and lrs[-1] < 1e-4
    # Accumulating two batches of 4 per step: 32 records are an epoch every 4 steps.
    assert lines[3]["epoch"] == pytest.approx(1.0)


def test_what_the_machine_or_the_data_cannot_do_is_refused_with_the_reason(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    manifest = write_dataset(store, "plain", {"train": ["just some text"] * 4})
    run = lambda **hp: train(spec(store, manifest, "models/m/x", **{"max_steps": 1, **hp}))  # noqa: E731
    if not torch.cuda.is_available():
        with pytest.raises(TrainingRefused, match="bf16 needs a GPU"):
            run(precision="bf16")
        with pytest.raises(TrainingRefused, match="QLoRA needs a CUDA GPU"):
            run(method="qlora")
    with pytest.raises(DataError, match="response_template"):
        run(task="sft")
    with pytest.raises(DataError, match="no_label"):
        run(task="classification")
    with pytest.raises(BaseModelError, match="unknown builtin"):
        train(spec(store, manifest, "models/m/x", base="builtin:nope", max_steps=1))


def test_requests_from_before_the_recipe_grew_keep_their_meaning() -> None:
    old = {
        "job_id": "job-000000000001",
        "model_name": "m",
        "dataset": "d",
        "dataset_version": 1,
        "dataset_manifest_uri": "file:///m.json",
        "hyperparameters": {"max_steps": 300, "eval_every": 50, "batch_size": 16, "max_seq_len": 64},
    }
    hp = TrainingRequestedV1.model_validate(old).hyperparameters
    assert (hp.task, hp.method, hp.max_steps, hp.epochs) == ("causal_lm", "full", 300, None)
    assert Hyperparameters() == Hyperparameters.model_validate({})
    schema = json.loads(Path("docs/events/lmforge.training.requested.v1.json").read_text())
    assert {"task", "method", "lora", "lr_scheduler"} <= set(json.dumps(schema).split('"'))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smollm2_lora_sft_answers_held_out_phrasings_with_their_intent(tmp_path: Path) -> None:
    """The real instruct base: LoRA SFT for a few steps on three phrasings of five support intents;
    the fifth phrasings validate, the third are the test split, never seen in training."""
    from lmforge.trainer.evaluation import generation_scores

    store = ArtifactStore(str(tmp_path / "artifacts"))
    manifest = write_dataset(
        store,
        "intents",
        {"train": intent_pairs(0, 1, 3), "val": intent_pairs(4), "test": intent_pairs(2)},
    )
    hp = {
        "task": "sft",
        "method": "lora",
        "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "learning_rate": 2e-3,
        "lr_scheduler": "cosine",
        "warmup_steps": 2,
        "max_steps": 20,
        "eval_every": 10,
        "log_every": 2,
        "batch_size": 8,
        "max_seq_len": 64,
        "eval_max_new_tokens": 24,
    }
    result = train(spec(store, manifest, "models/m/smol", base="builtin:smollm2-135m-instruct", **hp))
    m = result["metrics"]
    assert result["artifact_layout"] == "lora_adapter" and m["trainable_parameters"] < m["parameters"] / 50
    assert m["train_loss"] < m["train_loss_first"] / 3, m
    assert m["test_loss"] < 1.0 and m["test_rouge_l"] > 0.4, m
    # Each held-out answer is closest to its own intent's reference (chance: 1 in 5).
    report = json.loads(store.read_bytes(store.key_of(result["evaluation"]["report_uri"])))
    references = [answer for _, _, answer in INTENTS]
    matched = 0
    for sample in report["samples"]:
        _, rouge = generation_scores([sample["answer"]] * len(references), references)
        matched += references[rouge.index(max(rouge))] == sample["reference"]
    assert matched >= 3, report["samples"]
    assert store.exists("models/m/smol/base/model.safetensors") and store.exists("models/m/smol/adapter_config.json")
