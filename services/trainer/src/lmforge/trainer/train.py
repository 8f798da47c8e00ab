"""One training run, in its own process: ``python -m lmforge.trainer.train SPEC.json RESULT.json``.

The spec names the artifact store by ``artifacts_url`` and ``artifacts_storage_options`` (the
service's own settings, credentials included, so the spec file is private to the service user).

Reads the dataset version's Parquet shards from the artifact store, fine-tunes a causal language
model on the train split, evaluates validation perplexity every ``eval_every`` steps with early
stopping, saves the best weights and tokenizer to the artifact store, and writes the metrics.
Progress goes to stdout as JSON lines (``{"step": .., "loss": ..}``) for the job's status.

Base models: ``builtin:tiny-gpt2`` builds a small GPT-2 from a config with a byte-level BPE
tokenizer trained on the dataset (nothing is downloaded); any other value is a local Hugging Face
model directory (``AutoModelForCausalLM`` + ``AutoTokenizer``).
"""

from __future__ import annotations

import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.events import Hyperparameters

BUILTIN = "builtin:tiny-gpt2"
EOS = "<|endoftext|>"
PAD = "<pad>"


def progress(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def load_split(store: ArtifactStore, uri: str) -> list[str]:
    with store.open(store.key_of(uri)) as f:
        table = pq.read_table(f, columns=["text"])
    return [t for t in table.column("text").to_pylist() if t]


def open_store(spec: dict[str, Any]) -> ArtifactStore:
    """The service's artifact store, as the spec names it (options may hold credentials: never log them)."""
    return ArtifactStore(spec["artifacts_url"], spec.get("artifacts_storage_options") or {})


def build_tokenizer(texts: list[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's scheme) trained on the dataset: every byte is representable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=EOS)


def build_model(base: str, texts: list[str], hp: Hyperparameters) -> tuple[Any, Any]:
    if base == BUILTIN:
        tok = build_tokenizer(texts)
        config = GPT2Config(
            vocab_size=len(tok),
            n_positions=hp.max_seq_len,
            n_embd=64,
            n_layer=2,
            n_head=2,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        return GPT2LMHeadModel(config), tok
    path = Path(base)
    if not path.is_dir():
        raise ValueError(f"base model {base!r} is neither {BUILTIN!r} nor a local model directory")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return AutoModelForCausalLM.from_pretrained(path), tok


def encode(tok: Any, texts: list[str], max_len: int) -> list[list[int]]:
    out = []
    for t in texts:
        ids = tok(t + tok.eos_token, truncation=True, max_length=max_len)["input_ids"]
        if len(ids) >= 2:
            out.append(ids)
    return out


def batch_tensors(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids.to(device), mask.to(device), labels.to(device)


@torch.no_grad()
def evaluate(model: Any, seqs: list[list[int]], pad_id: int, device: torch.device, batch: int) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for i in range(0, len(seqs), batch):
        ids, mask, labels = batch_tensors(seqs[i : i + batch], pad_id, device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        total += float(loss) * n
        tokens += n
    model.train()
    return total / max(tokens, 1)


def train(spec: dict[str, Any]) -> dict[str, Any]:
    hp = Hyperparameters.model_validate(spec["hyperparameters"])
    random.seed(hp.seed)
    torch.manual_seed(hp.seed)
    store = open_store(spec)
    manifest = json.loads(store.read_bytes(store.key_of(spec["dataset_manifest_uri"])))
    train_texts = load_split(store, manifest["shards"]["train"])
    val_texts = load_split(store, manifest["shards"]["val"])
    if not train_texts:
        raise ValueError(f"dataset {manifest['dataset']} v{manifest['version']} has no training records")
    if not val_texts:  # tiny datasets: hold out a slice of train rather than report nothing
        val_texts = train_texts[-max(1, len(train_texts) // 10) :]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = build_model(spec["base_model"], train_texts, hp)
    model.to(device).train()
    train_seqs = encode(tok, train_texts, hp.max_seq_len)
    val_seqs = encode(tok, val_texts, hp.max_seq_len)
    optim = torch.optim.AdamW(model.parameters(), lr=hp.learning_rate)
    best_loss, best_state, bad_evals, step, loss_value = math.inf, None, 0, 0, math.nan
    early_stopped = False
    started = time.monotonic()
    for step in range(1, hp.max_steps + 1):
        ids, mask, labels = batch_tensors(
            random.sample(train_seqs, min(hp.batch_size, len(train_seqs))), tok.pad_token_id, device
        )
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad()
        loss_value = float(loss.detach())
        if step % hp.eval_every == 0 or step == hp.max_steps:
            val_loss = evaluate(model, val_seqs, tok.pad_token_id, device, hp.batch_size)
            progress(step=step, loss=round(loss_value, 4), val_perplexity=round(math.exp(val_loss), 3))
            if val_loss < best_loss - 1e-4:
                best_loss, bad_evals = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_evals += 1
                if hp.early_stopping_patience and bad_evals >= hp.early_stopping_patience:
                    early_stopped = True
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    with tempfile.TemporaryDirectory() as tmp:
        model.to("cpu").save_pretrained(tmp)
        tok.save_pretrained(tmp)
        artifact_uri = store.put_dir(Path(tmp), spec["artifact_key"])
    return {
        "artifact_uri": artifact_uri,
        "metrics": {
            "val_perplexity": round(math.exp(best_loss), 4),
            "val_loss": round(best_loss, 5),
            "train_loss": round(loss_value, 5),
            "steps": step,
            "early_stopped": float(early_stopped),
            "train_records": len(train_texts),
            "val_records": len(val_texts),
            "train_seconds": round(time.monotonic() - started, 2),
        },
    }


def main() -> None:
    spec_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    result = train(json.loads(spec_path.read_text()))
    result_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
