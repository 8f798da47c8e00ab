"""One training run, in its own process: ``python -m lmforge.trainer.train SPEC.json RESULT.json``.

The executor writes the spec (the job's recipe, the dataset manifest's URI, the artifact store by
``artifacts_url`` and ``artifacts_storage_options``, credentials included, so the spec file is
private to the service user) and reads the result. The same module runs under ``torchrun`` for
data-parallel jobs: every process trains, the first one (rank 0) writes the artifacts and the
result.

Training is transformers' ``Trainer``: TRL's ``SFTTrainer`` for ``causal_lm`` and ``sft`` (chat
templates, the loss on responses only), the plain ``Trainer`` for ``classification``, PEFT for
LoRA and QLoRA. Its callbacks report progress (``{"step": .., "loss": ..}`` JSON lines on stdout,
read by the executor for the job's status and metric history), stop early, and keep the best
weights. The model goes to the artifact store with its tokenizer (``docs/training.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Nothing is downloaded: base models are builtins, local folders or registered versions. Without
# this, libraries that meet a name they do not know retry a hub for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Progress goes out as JSON lines; progress bars would only fill the stderr kept for errors.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.events import (
    Hyperparameters,
    LrScheduler,
    Precision,
    TrainingMethod,
    TrainingTask,
)

from . import bases, evaluation
from .data import DataError, Example, SplitData, corpus_texts, eval_set_fingerprint, read_records, to_examples
from .protocol import REFUSED_EXIT_CODE

LM_TASKS = (TrainingTask.CAUSAL_LM, TrainingTask.SFT)


class TrainingRefused(ValueError):
    """The job asks for something this trainer cannot do (bf16 without a GPU, QLoRA without
    bitsandbytes): a clear reason for the job's error, before any work."""


def progress(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def open_store(spec: dict[str, Any]) -> ArtifactStore:
    """The service's artifact store, as the spec names it (options may hold credentials: never log them)."""
    return ArtifactStore(spec["artifacts_url"], spec.get("artifacts_storage_options") or {})


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# -- what runs where ------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    cuda: bool
    bf16: bool
    fp16: bool

    @property
    def name(self) -> str:
        return "cuda" if self.cuda else "cpu"


def placement(hp: Hyperparameters) -> Placement:
    """The device and precision for ``hp``; refuses what the machine cannot do, before any work."""
    cuda = torch.cuda.is_available()
    if hp.precision in (Precision.BF16, Precision.FP16) and not cuda:
        raise TrainingRefused(f"precision {hp.precision.value} needs a GPU; this trainer has none (use auto or fp32)")
    if hp.method == TrainingMethod.QLORA:
        if not cuda:
            raise TrainingRefused("QLoRA needs a CUDA GPU and bitsandbytes; this trainer has no GPU (use method lora)")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainingRefused("QLoRA needs bitsandbytes, which this trainer does not have (use method lora)")
    if hp.precision == Precision.BF16 and not torch.cuda.is_bf16_supported():
        raise TrainingRefused("precision bf16: this GPU has no bf16 (use fp16 or auto)")
    bf16 = cuda and (
        hp.precision == Precision.BF16 or (hp.precision == Precision.AUTO and torch.cuda.is_bf16_supported())
    )
    fp16 = cuda and not bf16 and hp.precision in (Precision.FP16, Precision.AUTO)
    return Placement(cuda=cuda, bf16=bf16, fp16=fp16)


# -- model and tokenizer --------------------------------------------------------------------


@dataclass
class Base:
    """The model to train, its tokenizer, and where the untouched base weights are (for LoRA's ``base/``)."""

    model: Any
    tokenizer: Any
    base_dir: Path | None
    labels: list[str]


def load_tokenizer(base_dir: Path | None, texts: list[str]) -> Any:
    from transformers import AutoTokenizer

    if base_dir is None:
        return bases.build_tokenizer(texts)
    tok = AutoTokenizer.from_pretrained(base_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # masked out of the labels by the collators, never learned
    return tok


def _quantization(pl: Placement) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if pl.bf16 else torch.float16,
    )


def load_model(
    hp: Hyperparameters, base_dir: Path | None, tok: Any, labels: list[str], pl: Placement, scratch: Path
) -> tuple[Any, Path | None]:
    """The model to train; and the folder of its untouched weights (the builtin one is saved there)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
        GPT2LMHeadModel,
    )

    classify = hp.task == TrainingTask.CLASSIFICATION
    label_maps = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    if base_dir is None:
        config = GPT2Config(
            vocab_size=len(tok),
            n_positions=max(hp.max_seq_len + hp.eval_max_new_tokens, 64),
            n_embd=64,
            n_layer=2,
            n_head=2,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **(label_maps if classify else {}),
        )
        model: Any = GPT2ForSequenceClassification(config) if classify else GPT2LMHeadModel(config)
        if hp.method == TrainingMethod.FULL:
            return model, None
        # LoRA trains over these weights: keep them, they are the artifact's base/.
        base_dir = scratch / "builtin-base"
        model.save_pretrained(base_dir)
        tok.save_pretrained(base_dir)
        if hp.method == TrainingMethod.LORA:
            return model, base_dir
    kwargs: dict[str, Any] = {}
    if hp.method == TrainingMethod.QLORA:
        kwargs = {"quantization_config": _quantization(pl), "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))}}
    if classify:
        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir, ignore_mismatched_sizes=True, **label_maps, **kwargs
        )
        model.config.pad_token_id = tok.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    return model, base_dir


def with_adapter(model: Any, hp: Hyperparameters) -> Any:
    """LoRA (or QLoRA) over the frozen base; classification heads stay trainable (``modules_to_save``)."""
    if hp.method == TrainingMethod.FULL:
        return model
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if hp.method == TrainingMethod.QLORA:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=hp.gradient_checkpointing)
    config = LoraConfig(
        r=hp.lora.r,
        lora_alpha=hp.lora.alpha,
        lora_dropout=hp.lora.dropout,
        target_modules=list(hp.lora.target_modules) if hp.lora.target_modules else None,
        task_type=TaskType.SEQ_CLS if hp.task == TrainingTask.CLASSIFICATION else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


def tokenizer_fingerprint(tok: Any) -> str:
    """The same fingerprint means the same token ids for the same text (per-token metrics compare)."""
    vocab = sorted(tok.get_vocab().items())
    digest = hashlib.sha256(json.dumps([vocab, type(tok).__name__]).encode()).hexdigest()
    return f"sha256-{digest[:16]}"


# -- the Trainer ----------------------------------------------------------------------------


class _Callbacks:
    """Trainer callbacks, built lazily so that importing this module stays cheap."""

    @staticmethod
    def progress(language_model: bool) -> Any:
        from transformers import TrainerCallback

        class ProgressReporter(TrainerCallback):  # type: ignore[misc]
            """Each log (loss, learning rate, eval loss) as a JSON line, for the executor's metric history."""

            def on_log(
                self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
            ) -> None:
                if not state.is_world_process_zero or not logs or "train_runtime" in logs:
                    return
                values = {
                    k: round(float(v), 6)
                    for k, v in logs.items()
                    if isinstance(v, int | float)
                    and math.isfinite(float(v))
                    and not k.endswith(("_runtime", "_per_second"))
                }
                if "eval_loss" in values and language_model:
                    values["val_perplexity"] = round(math.exp(min(values["eval_loss"], 50.0)), 4)
                progress(step=state.global_step, **values)

        return ProgressReporter()

    @staticmethod
    def checkpoints(store: ArtifactStore, prefix: str) -> Any:
        from transformers import TrainerCallback

        class CheckpointUploader(TrainerCallback):  # type: ignore[misc]
            """Each checkpoint the Trainer saves goes to the artifact store; ``latest.json`` names
            the newest and the best one (the only two kept), for a run claimed again to resume."""

            def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if not state.is_world_process_zero:
                    return
                name = f"checkpoint-{state.global_step}"
                store.put_dir(Path(args.output_dir) / name, f"{prefix}/{name}")
                best = Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None
                pointer = {"checkpoint": name, "step": state.global_step, "best": best}
                store.write_bytes(f"{prefix}/latest.json", json.dumps(pointer).encode())
                for old in {k.split("/")[len(prefix.split("/"))] for k in store.list(prefix)} - {name, best}:
                    if old.startswith("checkpoint-"):
                        store.fs.rm(store.path(f"{prefix}/{old}"), recursive=True)
                progress(step=state.global_step, event="checkpoint")

        return CheckpointUploader()


def registered_base(store: ArtifactStore, base: dict[str, Any], hp: Hyperparameters, into: Path) -> Path:
    """A registered version's artifact as a plain model folder to start from: a full model as it is,
    an adapter merged into its ``base/`` (the new run's LoRA, if any, goes over the merged weights)."""
    folder = store.get_dir(store.key_of(base["artifact_uri"]), into / "artifact")
    if not (folder / "adapter_config.json").is_file():
        return folder
    model, tok = bases.load_trained(folder, classification=hp.task == TrainingTask.CLASSIFICATION)
    model.save_pretrained(into / "merged")
    tok.save_pretrained(into / "merged")
    return into / "merged"


def restore_checkpoint(store: ArtifactStore, prefix: str | None, into: Path) -> Path | None:
    """The run's last checkpoint from the artifact store (and its best one, which the Trainer
    reloads at the end), ready for ``resume_from_checkpoint``; None when the run has none."""
    if not prefix or not store.exists(f"{prefix}/latest.json"):
        return None
    pointer = json.loads(store.read_bytes(f"{prefix}/latest.json"))
    for name in {pointer["checkpoint"], pointer.get("best")} - {None}:
        store.get_dir(f"{prefix}/{name}", into / name)
    latest = into / pointer["checkpoint"]
    state_path = latest / "trainer_state.json"
    state = json.loads(state_path.read_text())
    # The best checkpoint's path was the dead process's; here it is where it was just put.
    state["best_model_checkpoint"] = str(into / pointer["best"]) if pointer.get("best") else None
    state_path.write_text(json.dumps(state))
    return latest


def training_args(hp: Hyperparameters, out: Path, pl: Placement, *, sft: bool) -> Any:
    from transformers import TrainingArguments
    from trl import SFTConfig

    warmup = {"warmup_steps": hp.warmup_steps} if hp.warmup_steps else {"warmup_ratio": hp.warmup_ratio}
    scheduler = hp.lr_scheduler.value
    if hp.lr_scheduler == LrScheduler.CONSTANT and (hp.warmup_steps or hp.warmup_ratio):
        scheduler = "constant_with_warmup"
    common: dict[str, Any] = {
        "output_dir": str(out),
        "max_steps": -1 if hp.epochs else hp.max_steps,
        "num_train_epochs": hp.epochs or 1.0,
        "learning_rate": hp.learning_rate,
        "lr_scheduler_type": scheduler,
        **warmup,
        "weight_decay": hp.weight_decay,
        "max_grad_norm": hp.max_grad_norm,
        "per_device_train_batch_size": hp.batch_size,
        "per_device_eval_batch_size": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "gradient_checkpointing": hp.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if hp.gradient_checkpointing else None,
        "bf16": pl.bf16,
        "fp16": pl.fp16,
        "use_cpu": not pl.cuda,
        "ddp_backend": "gloo" if world_size() > 1 and not pl.cuda else None,
        "seed": hp.seed,
        "data_seed": hp.seed,
        "eval_strategy": "steps",
        "eval_steps": hp.eval_every,
        "save_strategy": "steps",
        "save_steps": hp.eval_every,
        "save_total_limit": 2,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "logging_strategy": "steps",
        "logging_steps": hp.log_every,
        "logging_first_step": True,
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "prediction_loss_only": True,
    }
    if not sft:
        return TrainingArguments(**common)
    return SFTConfig(**common, max_length=hp.max_seq_len, packing=False, dataset_num_proc=None)


def _dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(rows)


def build_trainer(
    hp: Hyperparameters,
    model: Any,
    tok: Any,
    train_data: SplitData,
    val_data: SplitData,
    labels: list[str],
    args: Any,
    callbacks: list[Any],
) -> Any:
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTTrainer

    if hp.early_stopping_patience:
        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=hp.early_stopping_patience)]
    if hp.task in LM_TASKS:
        trainer_class = SFTTrainer if torch.cuda.is_available() else _sft_trainer_with_model_loss()
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=_dataset([e.trl_row() for e in train_data.examples]),
            eval_dataset=_dataset([e.trl_row() for e in val_data.examples]),
            processing_class=tok,
            callbacks=callbacks,
        )
    else:
        trainer = _classification_trainer(hp, model, tok, train_data, val_data, labels, args, callbacks)
    trainer.remove_callback(PrinterCallback)  # progress goes out as JSON lines only
    return trainer


def _sft_trainer_with_model_loss() -> Any:
    """TRL's ``SFTTrainer`` with the loss of the model's own forward, for CPU runs.

    TRL computes the loss through a tiled "fused" LM head (log-probabilities of the label positions
    only, plus entropy and top-1 metrics) that saves GPU memory. On a CPU it cost about a quarter of
    each step (a py-spy profile of the demo's SmolLM2 LoRA job), and the ``trainer`` benchmark
    measured the job at 0.77x a bare loop. Here the model computes its cross-entropy over the same
    labels (prompt and padding are ``-100``), normalised by the same count of target tokens, as
    transformers' ``Trainer`` does; TRL's per-step ``entropy`` and ``mean_token_accuracy`` logs are
    not computed.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    class SFTTrainerWithModelLoss(SFTTrainer):  # type: ignore[misc]
        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            inputs = {k: v for k, v in inputs.items() if k not in ("completion_mask", "assistant_masks")}
            inputs["use_cache"] = False
            return Trainer.compute_loss(
                self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    return SFTTrainerWithModelLoss


def _classification_trainer(
    hp: Hyperparameters,
    model: Any,
    tok: Any,
    train_data: SplitData,
    val_data: SplitData,
    labels: list[str],
    args: Any,
    callbacks: list[Any],
) -> Any:
    from transformers import DataCollatorWithPadding, Trainer

    label_ids = {label: i for i, label in enumerate(labels)}

    def encode(examples: list[Example]) -> Any:
        return [
            {**tok(e.text, truncation=True, max_length=hp.max_seq_len), "labels": label_ids[e.label or ""]}
            for e in examples
            if e.label in label_ids
        ]

    return Trainer(
        model=model,
        args=args,
        train_dataset=_dataset(encode(train_data.examples)),
        eval_dataset=_dataset(encode(val_data.examples)),
        data_collator=DataCollatorWithPadding(tok),
        processing_class=tok,
        callbacks=callbacks,
    )


# -- the artifact -------------------------------------------------------------------------


def save_artifact(model: Any, tok: Any, hp: Hyperparameters, base_dir: Path | None, target: Path) -> str:
    """Write the trained model to ``target`` and say which layout it has.

    Full fine-tuning: a Hugging Face folder (weights, config, tokenizer, generation config).
    LoRA/QLoRA: the adapter (``adapter_config.json``, ``adapter_model.safetensors``) and the
    tokenizer, with the untouched base model inside as ``base/``: a runtime loads ``base/``, applies
    the adapter and merges. The generation config lists every stop token (EOS and the chat
    template's end of turn).
    """
    stop = bases.stop_token_ids(tok)
    if hp.task in LM_TASKS and stop:
        model.generation_config.eos_token_id = stop if len(stop) > 1 else stop[0]
        model.generation_config.pad_token_id = tok.pad_token_id
    if hp.method == TrainingMethod.FULL:
        model.save_pretrained(target)
        tok.save_pretrained(target)
        return "full"
    assert base_dir is not None
    model.peft_config["default"].base_model_name_or_path = "base"
    model.save_pretrained(target)
    tok.save_pretrained(target)
    if hp.task in LM_TASKS:
        model.generation_config.save_pretrained(target)
    bases.copy_base(base_dir, target / "base")
    if hp.task == TrainingTask.CLASSIFICATION:  # the head's labels, for loading base/ with the adapter
        (target / "base" / "config.json").unlink(missing_ok=True)
        model.get_base_model().config.save_pretrained(target / "base")
    tok.save_pretrained(target / "base")
    if hp.task in LM_TASKS:
        model.generation_config.save_pretrained(target / "base")
    return "lora_adapter"


# -- the run ------------------------------------------------------------------------------


def _splits(store: ArtifactStore, manifest: dict[str, Any]) -> dict[str, list[Any]]:
    shards = manifest.get("shards", {})
    return {
        split: read_records(store, shards[split]) if shards.get(split) else [] for split in ("train", "val", "test")
    }


def train(spec: dict[str, Any], *, on_trainer: Callable[[Any], None] | None = None) -> dict[str, Any]:
    from transformers import set_seed

    hp = Hyperparameters.model_validate(spec["hyperparameters"])
    pl = placement(hp)
    set_seed(hp.seed)
    store = open_store(spec)
    manifest = json.loads(store.read_bytes(store.key_of(spec["dataset_manifest_uri"])))
    records = _splits(store, manifest)
    if not records["train"]:
        raise DataError(f"dataset {manifest.get('dataset')} v{manifest.get('version')} has no training records")
    work = Path(spec.get("output_dir") or tempfile.mkdtemp(prefix="lmforge-train-"))
    work.mkdir(parents=True, exist_ok=True)
    if spec.get("base_artifact"):  # continual fine-tuning: a registered version, resolved by the executor
        base_dir: Path | None = registered_base(store, spec["base_artifact"], hp, work / f"registered-base-{rank()}")
    else:
        base_dir = bases.base_dir(spec["base_model"], Path(spec.get("model_cache_dir") or "var/model-cache"))

    prefix = spec.get("checkpoint_prefix")
    resume = restore_checkpoint(store, prefix, work / f"resume-{rank()}")
    # The builtin tokenizer is trained on the records; a chat template decides how pairs are written.
    # A resumed run takes the one its checkpoint saved.
    if resume is not None and base_dir is None:
        tok = load_tokenizer(resume, [])
    elif base_dir is None:
        texts = corpus_texts(to_examples(records["train"], hp.task, hp.response_template, chat=True).examples)
        tok = load_tokenizer(None, texts or [r.text for r in records["train"]])
    else:
        tok = load_tokenizer(base_dir, [])
    chat = bool(getattr(tok, "chat_template", None))
    data = {split: to_examples(rs, hp.task, hp.response_template, chat) for split, rs in records.items()}
    if not data["train"].examples:
        raise DataError(f"no training record fits task {hp.task.value}: skipped {data['train'].skipped}")
    if not data["val"].examples:  # tiny datasets: hold out a slice of train rather than report nothing
        held = max(1, len(data["train"].examples) // 10)
        data["val"] = SplitData(data["train"].examples[-held:], data["train"].records[-held:])
    labels = sorted({e.label for e in data["train"].examples if e.label is not None})
    if hp.task == TrainingTask.CLASSIFICATION and len(labels) < 2:
        raise DataError(f"classification needs at least two labels in the train split, found {labels}")

    model, base_weights = load_model(hp, base_dir, tok, labels, pl, work)
    model = with_adapter(model, hp)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    args = training_args(hp, work / "checkpoints", pl, sft=hp.task in LM_TASKS)
    callbacks = [_Callbacks.progress(hp.task in LM_TASKS)]
    if prefix:
        callbacks.append(_Callbacks.checkpoints(store, prefix))
    trainer = build_trainer(hp, model, tok, data["train"], data["val"], labels, args, callbacks)
    if on_trainer is not None:
        on_trainer(trainer)
    resumed_from = 0
    if resume is not None:
        resumed_from = json.loads((resume / "trainer_state.json").read_text())["global_step"]
        if rank() == 0:
            progress(step=resumed_from, event="resumed")
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    seconds = time.monotonic() - started
    if not trainer.is_world_process_zero():
        return {}  # the first process evaluates and writes; the others are done
    best = trainer.state.best_metric
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    metrics: dict[str, float] = {
        "steps": float(trainer.state.global_step),
        "early_stopped": float(trainer.state.global_step < trainer.state.max_steps),
        "train_loss": round(losses[-1], 5) if losses else math.nan,
        "train_loss_first": round(losses[0], 5) if losses else math.nan,
        "train_records": float(len(data["train"].examples)),
        "val_records": float(len(data["val"].examples)),
        "train_seconds": round(seconds, 2),
        "train_samples_per_second": round(float(result.metrics.get("train_samples_per_second", 0.0)), 3),
        "trainable_parameters": float(trainable),
        "parameters": float(total),
        "world_size": float(world_size()),
        "resumed_from_step": float(resumed_from),
    }
    if spec.get("base_artifact"):
        metrics["base_version"] = float(spec["base_artifact"]["version"])
    if best is not None:
        metrics["val_loss"] = round(float(best), 5)
        if hp.task in LM_TASKS:
            metrics["val_perplexity"] = round(math.exp(min(float(best), 50.0)), 4)
    for split in ("train", "val", "test"):
        for reason, n in data[split].skipped.items():
            metrics[f"skipped_{split}_{reason}"] = float(n)

    trained = trainer.model
    summary, report = evaluate(spec, hp, manifest, trainer, tok, data, records)
    metrics.update({k: v for k, v in summary["metrics"].items() if isinstance(v, float | int)})
    report["metrics"] = metrics
    report["history"] = [{k: v for k, v in h.items() if isinstance(v, int | float)} for h in trainer.state.log_history]
    report_key = spec.get("report_key") or f"{spec['artifact_key']}-report"
    summary["report_uri"] = evaluation.write_report(store, report_key, report)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        layout = save_artifact(trained, tok, hp, base_weights, Path(tmp))
        artifact_uri = store.put_dir(Path(tmp), spec["artifact_key"])
    if prefix:  # the model is stored: the run's checkpoints have served their purpose
        store.fs.rm(store.path(prefix), recursive=True)
    return {
        "artifact_uri": artifact_uri,
        "artifact_layout": layout,
        "device": pl.name,
        "labels": labels,
        "metrics": metrics,
        "evaluation": summary,
    }


def evaluate(
    spec: dict[str, Any],
    hp: Hyperparameters,
    manifest: dict[str, Any],
    trainer: Any,
    tok: Any,
    data: dict[str, SplitData],
    records: dict[str, list[Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trained model on the test split (the validation split when a version has no test
    records): the summary for the event and the job, and the report's body."""
    split = "test" if data["test"].examples else "val"
    test = data[split]
    model = trainer.model
    report: dict[str, Any] = {
        "model_name": spec.get("model_name", ""),
        "run_id": spec.get("run_id", ""),
        "job_id": spec.get("job_id", ""),
        "base_model": spec["base_model"],
        "task": hp.task.value,
        "method": hp.method.value,
        "hyperparameters": hp.model_dump(mode="json"),
        "dataset": manifest.get("dataset", ""),
        "dataset_version": manifest.get("version", 0),
        "split": split,
        "records": len(test.examples),
        "eval_set": eval_set_fingerprint(test.records),
        "tokenizer": tokenizer_fingerprint(tok),
    }
    scores, extras = measure(hp, trainer, model, tok, test.examples)
    report.update(extras)
    if spec.get("baseline"):
        # The version the gate compares with, on these same records (docs/training.md, "The gate").
        try:
            report["baseline"] = measure_baseline(spec, hp, trainer, records[split])
        except Exception as exc:  # noqa: BLE001 - no comparison is no reason to lose the trained model
            report["baseline_error"] = f"{type(exc).__name__}: {exc}"[:500]
    summary = {
        "split": split,
        "eval_set": report["eval_set"],
        "tokenizer": report["tokenizer"],
        "records": len(test.examples),
        "metrics": scores,
    }
    if "baseline" in report:
        summary["baseline"] = {k: v for k, v in report["baseline"].items() if k != "samples"}
    return summary, report


def measure(
    hp: Hyperparameters, trainer: Any, model: Any, tok: Any, examples: list[Example]
) -> tuple[dict[str, float], dict[str, Any]]:
    """``model`` (with its own tokenizer ``tok``) on ``examples``: the scores, and the report's
    samples or per-class tables."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    scores: dict[str, float] = {}
    extras: dict[str, Any] = {}
    if hp.task in LM_TASKS:
        raw = _dataset([e.trl_row() for e in examples])
        # TRL's own preparation, so the test tokens are exactly what training sees.
        with _preparing_alone():
            prepared = trainer._prepare_dataset(raw, tok, trainer.args, False, None, "test")
        keep = [k for k in ("input_ids", "labels", "completion_mask") if k in prepared.column_names]
        rows = [{k: prepared[i][k] for k in keep} for i in range(len(prepared))]
        collator = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)
        scores.update(evaluation.language_model_loss(model, rows, collator, tok, hp.batch_size))
        asked = [e for e in examples if e.prompt is not None and e.reference][: hp.eval_max_samples]
        if asked:
            answers = evaluation.greedy_answers(model, tok, asked, hp.eval_max_new_tokens, hp.batch_size)
            references = [e.reference or "" for e in asked]
            generated, rouge = evaluation.generation_scores(answers, references)
            scores.update(generated)
            extras["samples"] = [
                {"prompt": evaluation.prompt_for_report(e), "reference": ref, "answer": ans, "rouge_l": round(r, 4)}
                for e, ref, ans, r in zip(asked, references, answers, rouge, strict=True)
            ][:20]
        return scores, extras
    # Labels by name: a baseline may know other labels than this run (what it never predicts is an error).
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    predicted = [names[i] for i in evaluation.classify(model, tok, examples, hp.max_seq_len, hp.batch_size)]
    truth = [e.label or "" for e in examples]
    labels = sorted(set(truth) | set(names))
    index = {label: i for i, label in enumerate(labels)}
    result = evaluation.classification_scores([index[t] for t in truth], [index[p] for p in predicted], labels)
    scores.update(result["metrics"])
    extras["per_class"], extras["confusion_matrix"] = result["per_class"], result["confusion_matrix"]
    return scores, extras


@contextlib.contextmanager
def _preparing_alone() -> Iterator[None]:
    """TRL prepares a dataset on the main process first while the others wait at a barrier. After a
    data-parallel run the first process evaluates alone (the others have finished), so here that
    ordering is a no-op."""
    from trl.trainer import sft_trainer

    ordered = sft_trainer.global_then_local_main_first
    sft_trainer.global_then_local_main_first = contextlib.nullcontext  # type: ignore[assignment]
    try:
        yield
    finally:
        sft_trainer.global_then_local_main_first = ordered


def measure_baseline(spec: dict[str, Any], hp: Hyperparameters, trainer: Any, records: list[Any]) -> dict[str, Any]:
    """The alias's version (``spec["baseline"]``) measured on the same records as the new model."""
    baseline = spec["baseline"]
    store = open_store(spec)
    with tempfile.TemporaryDirectory() as tmp:
        folder = store.get_dir(store.key_of(baseline["artifact_uri"]), Path(tmp) / "baseline")
        model, tok = bases.load_trained(folder, classification=hp.task == TrainingTask.CLASSIFICATION)
    model.to(trainer.model.device if hasattr(trainer.model, "device") else "cpu")
    examples = to_examples(records, hp.task, hp.response_template, bool(getattr(tok, "chat_template", None))).examples
    scores, extras = measure(hp, trainer, model, tok, examples)
    return {
        "alias": baseline["alias"],
        "version": int(baseline["version"]),
        "tokenizer": tokenizer_fingerprint(tok),
        "metrics": scores,
        **({"samples": extras["samples"]} if "samples" in extras else {}),
    }


def _die_with_parent() -> None:
    """Under torchrun the launcher is the parent: when it dies, so does this process."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main() -> None:
    _die_with_parent()
    spec_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        result = train(json.loads(spec_path.read_text()))
    except (TrainingRefused, DataError, bases.BaseModelError) as exc:
        if rank() == 0:
            result_path.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        sys.exit(REFUSED_EXIT_CODE)
    if rank() == 0:
        result_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
