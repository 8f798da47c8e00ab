"""The trainer's code path against a bare transformers + peft loop: same model, data and steps.

Both fine-tune SmolLM2-135M-Instruct with LoRA (r=16 on q/k/v/o) on the demo's support tickets
(their HTML tags removed), the loss on the answers after " Agent:", with the demo's
hyperparameters: batch 8, up to 64 tokens, AdamW at 2e-3 with a cosine schedule after 2 warmup
steps, gradient clipping at 1.0.

- lmforge: ``lmforge.trainer.train.train``, the function a trainer job runs in its subprocess
  (transformers' Trainer through TRL's SFTTrainer, validation and an adapter checkpoint every
  ``eval_every`` steps, the best checkpoint loaded at the end). Its figure is steps x batch over
  the seconds of ``trainer.train()``; loading, the test-split evaluation and the artifact upload
  come after and are not counted.
- bare: the same model and LoRA config from peft, tokenized by hand (prompt tokens masked with
  -100), a hand-written loop: forward, backward, clip, AdamW step, scheduler step. No validation.

Prints ``trainer: <lmforge samples/s> vs bare <samples/s>, ratio <r>``. The goal is a ratio of at
least 0.95. Usage: ``.venv/bin/python bench/trainer.py [--steps 40] [--eval-every 20]``.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.common.artifacts import ArtifactStore
from lmforge.devstack.dataset_seed import write_dataset
from lmforge.devstack.demo import BASE_MODEL, HYPERPARAMETERS
from lmforge.devstack.support_corpus import make_corpus

TEMPLATE = HYPERPARAMETERS["response_template"]


def ticket_texts(n: int) -> list[str]:
    texts = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", r["text"])).strip() for r in make_corpus(n)]
    return list(dict.fromkeys(texts))  # preprocess drops exact duplicates too


def run_lmforge(folder: Path, texts: list[str], hp: dict[str, Any]) -> tuple[float, float]:
    from lmforge.trainer.train import train

    with tempfile.TemporaryDirectory() as tmp:
        store = ArtifactStore(str(Path(tmp) / "artifacts"))
        held = max(1, len(texts) // 10)
        manifest = write_dataset(store, "tickets", {"train": texts[held:], "val": texts[:held], "test": texts[:4]})
        result = train(
            {
                "hyperparameters": hp,
                "base_model": BASE_MODEL,
                "dataset_manifest_uri": manifest,
                "artifacts_url": store.url,
                "artifact_key": "models/bench",
                "model_cache_dir": str(folder.parent),
                "output_dir": str(Path(tmp) / "work"),
            }
        )
    m = result["metrics"]
    return m["steps"] * hp["batch_size"] / m["train_seconds"], m["train_loss"]


def run_bare(folder: Path, texts: list[str], hp: dict[str, Any]) -> tuple[float, float]:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup, set_seed

    set_seed(hp.get("seed", 0))
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    lora = hp["lora"]
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=0.05,
            target_modules=lora["target_modules"],
            task_type=TaskType.CAUSAL_LM,
        ),
    )
    examples = []
    held = max(1, len(texts) // 10)
    for text in texts[held:]:  # the same train split as the lmforge run
        cut = text.index(TEMPLATE) + len(TEMPLATE)
        prompt_ids = tok(text[:cut])["input_ids"]
        answer_ids = tok(text[cut:])["input_ids"] + [tok.eos_token_id]
        ids = (prompt_ids + answer_ids)[: hp["max_seq_len"]]
        labels = ([-100] * len(prompt_ids) + answer_ids)[: hp["max_seq_len"]]
        examples.append((ids, labels))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp["learning_rate"], weight_decay=0.0)
    steps, batch = hp["max_steps"], hp["batch_size"]
    schedule = get_cosine_schedule_with_warmup(optimizer, hp["warmup_steps"], steps)
    order: list[int] = []
    rnd = random.Random(0)
    model.train()
    loss = torch.tensor(0.0)
    started = time.monotonic()
    for _ in range(steps):
        if len(order) < batch:
            more = list(range(len(examples)))
            rnd.shuffle(more)
            order += more
        chosen = [examples[i] for i in order[:batch]]
        del order[:batch]
        width = max(len(ids) for ids, _ in chosen)
        pad = tok.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chosen])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chosen])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chosen])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.monotonic() - started
    return steps * batch / seconds, float(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=HYPERPARAMETERS["max_steps"])
    parser.add_argument("--eval-every", type=int, default=HYPERPARAMETERS["eval_every"])
    args = parser.parse_args()
    try:
        from lmforge.trainer.bases import smollm2_dir

        folder = smollm2_dir(Path("var/model-cache"))
    except Exception as exc:  # noqa: BLE001 - the wheel or the trainer is missing
        sys.exit(f"SmolLM2 unavailable ({type(exc).__name__}: {exc}); this benchmark needs it")
    hp = {**HYPERPARAMETERS, "max_steps": args.steps, "eval_every": args.eval_every}
    texts = ticket_texts(200)
    print(
        f"SmolLM2-135M-Instruct LoRA r={hp['lora']['r']}, {len(texts)} tickets, {args.steps} steps of "
        f"{hp['batch_size']}, torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    bare, bare_loss = run_bare(folder, texts, hp)
    ours, our_loss = run_lmforge(folder, texts, hp)
    print(f"last loss: lmforge {our_loss:.3f}, bare {bare_loss:.3f}")
    print(f"trainer: {ours:.2f} samples/s vs bare {bare:.2f} samples/s, ratio {ours / bare:.2f}")


if __name__ == "__main__":
    main()
