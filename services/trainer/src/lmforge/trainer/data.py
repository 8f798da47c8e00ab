"""From a dataset version's records to training examples, per task (``docs/training.md``).

A record's ``text`` is one of:

- plain text: continued pre-training (``causal_lm``), or, with ``response_template``, a
  prompt/response pair split at the first occurrence of that marker (the prompt keeps it);
- a JSON object with ``messages`` (``[{"role": "system"|"user"|"assistant", "content": ...}]``,
  ending with an assistant turn): the last assistant turn is the response;
- a JSON object with ``prompt`` and ``response`` (or ``completion``), or Alpaca's ``instruction``,
  optional ``input`` and ``output``.

Pairs and chats become chat-formatted examples when the tokenizer has a chat template (the
response then ends with the template's end of turn), plain ``prompt`` + ``completion`` strings
otherwise (the response then ends with EOS). ``classification`` takes the text and the record's
``label``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.events import TrainingTask

ROLES = ("system", "user", "assistant")
Chat = list[dict[str, str]]


class DataError(ValueError):
    """The records do not fit the job's task: a clear reason for the job's error."""


@dataclass(frozen=True)
class Record:
    record_id: str
    content_hash: str
    text: str
    label: str | None = None


@dataclass
class Example:
    """One training or evaluation example. ``prompt``/``completion`` are strings (plain) or chat
    turns (conversational); ``reference`` is the response text that generated answers are scored
    against."""

    record_id: str
    text: str | None = None
    prompt: str | Chat | None = None
    completion: str | Chat | None = None
    label: str | None = None

    @property
    def reference(self) -> str | None:
        if self.completion is None:
            return None
        if isinstance(self.completion, str):
            return self.completion.strip()
        return self.completion[-1]["content"].strip()

    def trl_row(self) -> dict[str, Any]:
        """The row TRL's SFTTrainer takes: ``text`` (language modelling) or ``prompt``/``completion``."""
        if self.text is not None:
            return {"text": self.text}
        return {"prompt": self.prompt, "completion": self.completion}


@dataclass
class SplitData:
    examples: list[Example]
    records: list[Record]
    skipped: dict[str, int] = field(default_factory=dict)


def read_records(store: ArtifactStore, uri: str) -> list[Record]:
    """A split's Parquet shard: ``record_id``, ``text`` and, where present, ``content_hash``, ``label``."""
    with store.open(store.key_of(uri)) as f:
        table = pq.read_table(f)
    columns = set(table.column_names)
    rows = table.to_pylist()
    return [
        Record(
            record_id=str(r.get("record_id") or i),
            content_hash=r.get("content_hash") or hashlib.sha256(r["text"].encode()).hexdigest(),
            text=r["text"],
            label=r.get("label") if "label" in columns else None,
        )
        for i, r in enumerate(rows)
        if r.get("text")
    ]


def _chat(value: Any, where: str) -> Chat:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: messages must be a non-empty list")
    turns: Chat = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] needs a role ({', '.join(ROLES)}) and a string content")
        turns.append({"role": m["role"], "content": m["content"]})
    if turns[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's (the response to learn)")
    if not any(t["role"] == "user" for t in turns[:-1]):
        raise DataError(f"{where}: messages need a user turn before the assistant's")
    return turns


def _pair(obj: dict[str, Any], where: str) -> tuple[str, str] | None:
    response = obj.get("response", obj.get("completion"))
    if isinstance(obj.get("prompt"), str) and isinstance(response, str):
        return obj["prompt"], response
    if isinstance(obj.get("instruction"), str) and isinstance(obj.get("output"), str):
        extra = obj.get("input")
        prompt = obj["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
        return prompt, obj["output"]
    if {"prompt", "response", "completion", "instruction", "output"} & obj.keys():
        raise DataError(f"{where}: a pair needs string 'prompt' and 'response' (or 'instruction' and 'output')")
    return None


def _parse_json(text: str) -> dict[str, Any] | None:
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def to_example(
    record: Record, task: TrainingTask, response_template: str | None, chat: bool
) -> tuple[Example | None, str | None]:
    """The record as an example of ``task``; or ``(None, reason)`` for a record that has to be skipped."""
    where = f"record {record.record_id}"
    if task == TrainingTask.CLASSIFICATION:
        if record.label is None or not record.label.strip():
            return None, "no_label"
        return Example(record.record_id, text=record.text, label=record.label.strip()), None
    obj = _parse_json(record.text)
    prompt: str | Chat | None = None
    completion: str | Chat | None = None
    if obj is not None and "messages" in obj:
        turns = _chat(obj["messages"], where)
        prompt, completion = turns[:-1], turns[-1:]
    elif obj is not None and (pair := _pair(obj, where)) is not None:
        prompt, completion = pair
        if chat:
            prompt, completion = [{"role": "user", "content": pair[0]}], [{"role": "assistant", "content": pair[1]}]
    elif response_template is not None:
        at = record.text.find(response_template)
        if at >= 0:
            cut = at + len(response_template)
            prompt, completion = record.text[:cut], record.text[cut:]
    if isinstance(prompt, list) and not chat:
        raise DataError(f"{where}: a chat record needs a base model whose tokenizer has a chat template")
    if task == TrainingTask.CAUSAL_LM:
        # The whole text is learned; a pair (where there is one) is kept for the generation metrics.
        if prompt is None:
            return Example(record.record_id, text=record.text), None
        return Example(record.record_id, text=record.text, prompt=prompt, completion=completion), None
    if prompt is None:
        if response_template is not None:
            return None, "no_response_template"
        raise DataError(
            f"{where}: an sft record is JSON with 'messages' or 'prompt'/'response', or plain text split by "
            "the job's response_template"
        )
    if (isinstance(completion, str) and not completion.strip()) or not prompt:
        return None, "empty_response"
    return Example(record.record_id, prompt=prompt, completion=completion), None


def to_examples(records: list[Record], task: TrainingTask, response_template: str | None, chat: bool) -> SplitData:
    examples: list[Example] = []
    kept: list[Record] = []
    skipped: dict[str, int] = {}
    for record in records:
        example, reason = to_example(record, task, response_template, chat)
        if example is None:
            skipped[reason or "skipped"] = skipped.get(reason or "skipped", 0) + 1
            continue
        examples.append(example)
        kept.append(record)
    return SplitData(examples, kept, skipped)


def corpus_texts(examples: list[Example]) -> list[str]:
    """Every string of the examples, for training the builtin tokenizer."""
    out: list[str] = []
    for e in examples:
        for part in (e.text, e.prompt, e.completion):
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, list):
                out.extend(t["content"] for t in part)
    return out


def eval_set_fingerprint(records: list[Record]) -> str:
    """Which examples a model was measured on: the same fingerprint means the same records (ids and
    contents), whichever dataset version they came in."""
    digest = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.record_id):
        digest.update(f"{r.record_id}\x00{r.content_hash}\n".encode())
    return f"sha256-{digest.hexdigest()[:16]}"
