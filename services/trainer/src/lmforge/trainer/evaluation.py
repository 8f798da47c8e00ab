"""After training: the model measured on the dataset version's test split, and its report.

Language-model tasks:
- ``test_loss`` and ``test_perplexity``: per token, on the tokens the task learns (the responses for
  ``sft``, all of the text for ``causal_lm``), tokenized exactly as training tokenizes;
- ``test_bits_per_byte``: the same negative log-likelihood per UTF-8 byte of the scored text, which
  does not depend on the tokenizer (``docs/training.md``, "Comparing models");
- for examples with a prompt and a reference response: greedy answers, scored with ROUGE-L (F1),
  corpus BLEU (sacrebleu) and exact match (after normalising case, spaces and end punctuation).

Classification: accuracy, macro-F1, per-class precision and recall, the confusion matrix.

The report (JSON, Markdown and an SVG of the curves) goes to ``reports/<model>/<run_id>/``.
"""

from __future__ import annotations

import html
import json
import math
import re
import string
from typing import Any

import torch

from lmforge.common.artifacts import ArtifactStore

from . import bases
from .data import Example

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORDS = re.compile(rf"[{_CJK}]|[^\s{_CJK}{re.escape(string.punctuation)}]+")


class _MixedTokenizer:
    """ROUGE tokens: lowercase words, and CJK characters one by one (rouge-score's default drops them)."""

    def tokenize(self, text: str) -> list[str]:
        return _WORDS.findall(text.lower())


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def language_model_loss(
    model: Any, rows: list[dict[str, Any]], collator: Any, tok: Any, batch: int
) -> dict[str, float]:
    """Summed NLL over the learned tokens of tokenized rows (``input_ids`` + ``completion_mask`` or
    ``labels``): per token and per byte of the text those tokens spell."""
    model.eval()
    device = _device(model)
    nll, tokens, nbytes = 0.0, 0, 0
    for i in range(0, len(rows), batch):
        inputs = collator(rows[i : i + batch])
        labels = inputs["labels"].to(device)
        logits = model(
            input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)
        ).logits
        shifted, targets = logits[:, :-1].float(), labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum"
        )
        nll += float(losses)
        scored = targets != -100
        tokens += int(scored.sum())
        for row_ids, row_mask in zip(targets.tolist(), scored.tolist(), strict=True):
            ids = [t for t, keep in zip(row_ids, row_mask, strict=True) if keep]
            nbytes += len(tok.decode(ids).encode("utf-8"))
    if not tokens:
        return {}
    loss = nll / tokens
    return {
        "test_loss": round(loss, 5),
        "test_perplexity": round(math.exp(min(loss, 50.0)), 4),
        "test_bits_per_byte": round(nll / math.log(2) / max(nbytes, 1), 5),
        "test_tokens": float(tokens),
    }


def _prompt_text(tok: Any, example: Example) -> tuple[str, bool]:
    """The prompt as generation sees it, and whether the tokenizer should add its special tokens."""
    if isinstance(example.prompt, list):
        return tok.apply_chat_template(example.prompt, tokenize=False, add_generation_prompt=True), False
    return str(example.prompt), True


@torch.no_grad()
def greedy_answers(model: Any, tok: Any, examples: list[Example], max_new_tokens: int, batch: int) -> list[str]:
    """Greedy answers, batched with left padding, stopped at EOS or the chat template's end of turn."""
    model.eval()
    device = _device(model)
    stop = bases.stop_token_ids(tok)
    side = tok.padding_side
    tok.padding_side = "left"
    answers: list[str] = []
    try:
        for i in range(0, len(examples), batch):
            chunk = examples[i : i + batch]
            prompts = [_prompt_text(tok, e) for e in chunk]
            enc = tok(
                [p for p, _ in prompts],
                return_tensors="pt",
                padding=True,
                add_special_tokens=prompts[0][1],
                return_token_type_ids=False,
            ).to(device)
            # Never past the model's positions: the prompt and the answer share them.
            room = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
            new_tokens = max_new_tokens if room is None else min(max_new_tokens, room - enc["input_ids"].shape[1])
            if new_tokens < 1:
                answers.extend("" for _ in chunk)
                continue
            out = model.generate(
                **enc,
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tok.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            answers.extend(tok.decode(row, skip_special_tokens=True).strip() for row in new)
    finally:
        tok.padding_side = side
    return answers


def generation_scores(answers: list[str], references: list[str]) -> tuple[dict[str, float], list[float]]:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_MixedTokenizer())
    rouge = [scorer.score(ref, ans)["rougeL"].fmeasure for ans, ref in zip(answers, references, strict=True)]
    cjk = any(re.search(f"[{_CJK}]", r) for r in references)
    bleu = sacrebleu.corpus_bleu(answers, [references], tokenize="zh" if cjk else "13a").score
    exact = [_normalise(a) == _normalise(r) for a, r in zip(answers, references, strict=True)]
    n = max(len(answers), 1)
    return {
        "test_rouge_l": round(sum(rouge) / n, 5),
        "test_bleu": round(bleu, 3),
        "test_exact_match": round(sum(exact) / n, 5),
        "test_answered": float(len(answers)),
    }, rouge


@torch.no_grad()
def classify(model: Any, tok: Any, examples: list[Example], max_len: int, batch: int) -> list[int]:
    model.eval()
    device = _device(model)
    predictions: list[int] = []
    for i in range(0, len(examples), batch):
        enc = tok(
            [e.text for e in examples[i : i + batch]],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_len,
            return_token_type_ids=None,
        ).to(device)
        predictions.extend(model(**enc).logits.argmax(-1).tolist())
    return predictions


def classification_scores(truth: list[int], predicted: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows: truth)."""
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    for t, p in zip(truth, predicted, strict=True):
        confusion[t][p] += 1
    per_class: dict[str, dict[str, float]] = {}
    f1s = []
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        predicted_i = sum(confusion[r][i] for r in range(k))
        actual_i = sum(confusion[i])
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / actual_i if actual_i else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": round(precision, 5),
            "recall": round(recall, 5),
            "f1": round(f1, 5),
            "support": float(actual_i),
        }
        if actual_i:
            f1s.append(f1)
    n = max(len(truth), 1)
    return {
        "metrics": {
            "test_accuracy": round(sum(confusion[i][i] for i in range(k)) / n, 5),
            "test_macro_f1": round(sum(f1s) / max(len(f1s), 1), 5),
            "test_records": float(len(truth)),
        },
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "rows_truth_columns_predicted": confusion},
    }


# -- the report -------------------------------------------------------------------------------


def curves_svg(history: list[dict[str, Any]], width: int = 640, height: int = 280) -> str:
    """Training loss and validation loss against the step, as a self-contained SVG."""
    series = {
        "train loss": [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h],
        "val loss": [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h],
    }
    points = [p for s in series.values() for p in s]
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"></svg>'
    pad = 40
    max_step = max(max(p[0] for p in points), 1)
    top = max(p[1] for p in points) or 1.0
    colours = {"train loss": "#1f77b4", "val loss": "#d62728"}

    def xy(step: float, value: float) -> str:
        x = pad + (width - 2 * pad) * step / max_step
        y = height - pad - (height - 2 * pad) * value / top
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>',
        f'<text x="{width - pad}" y="{height - 10}" text-anchor="end">step {max_step}</text>',
        f'<text x="5" y="{pad - 5}">{top:.3g}</text>',
    ]
    for i, (name, pts) in enumerate(series.items()):
        if pts:
            path = " ".join(xy(s, v) for s, v in pts)
            parts.append(f'<polyline fill="none" stroke="{colours[name]}" stroke-width="2" points="{path}"/>')
        parts.append(f'<text x="{pad + 10 + 110 * i}" y="{pad - 5}" fill="{colours[name]}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def markdown_report(report: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation: {report['model_name']} ({report['run_id']})",
        "",
        f"Base `{report['base_model']}`, task `{report['task']}`, method `{report['method']}`; measured on "
        f"{report['dataset']} v{report['dataset_version']}, split `{report['split']}` "
        f"({report['records']} records, evaluation set `{report['eval_set']}`, tokenizer `{report['tokenizer']}`).",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:g} |" for k, v in sorted(report["metrics"].items())],
        "",
        "## Curves",
        "",
        "![training and validation loss](curves.svg)",
        "",
    ]
    evals = [h for h in report["history"] if "eval_loss" in h]
    if evals:
        lines += ["| step | val loss | val perplexity |", "|---|---|---|"]
        lines += [f"| {h['step']} | {h['eval_loss']:.4f} | {math.exp(min(h['eval_loss'], 50.0)):.3f} |" for h in evals]
        lines.append("")
    if report.get("per_class"):
        lines += ["## Per class", "", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for label, s in report["per_class"].items():
            lines.append(
                f"| {_cell(label)} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']:g} |"
            )
        matrix = report["confusion_matrix"]
        lines += ["", "Confusion matrix (rows: true label, columns: predicted):", ""]
        lines.append("| | " + " | ".join(_cell(label, 30) for label in matrix["labels"]) + " |")
        lines.append("|---" * (len(matrix["labels"]) + 1) + "|")
        for label, row in zip(matrix["labels"], matrix["rows_truth_columns_predicted"], strict=True):
            lines.append(f"| {_cell(label, 30)} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    if report.get("samples"):
        lines += ["## Sample answers", "", "| prompt | reference | answer | ROUGE-L |", "|---|---|---|---|"]
        for s in report["samples"]:
            lines.append(
                f"| {_cell(s['prompt'])} | {_cell(s['reference'])} | {_cell(s['answer'])} | {s['rouge_l']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_report(store: ArtifactStore, key: str, report: dict[str, Any]) -> str:
    """Store the report as JSON, Markdown and the curves' SVG under ``key``; returns the JSON's URI."""
    store.write_bytes(f"{key}/curves.svg", curves_svg(report["history"]).encode())
    store.write_bytes(f"{key}/evaluation.md", markdown_report(report).encode())
    return store.write_bytes(f"{key}/evaluation.json", json.dumps(report, indent=1).encode())


def prompt_for_report(example: Example) -> str:
    if isinstance(example.prompt, list):
        return " / ".join(f"{t['role']}: {t['content']}" for t in example.prompt)
    return str(example.prompt)
