"""Put a model version in front of the serving path without training one.

``publish_model`` copies a Hugging Face weights folder into the stack's artifact store and
publishes the ``model-ready`` event a finished training job would, so the registry registers and
gates it, moves ``production`` and inference deploys it into Triton. Serving tests and the
serving benchmarks use it; the loop test and the demo train their model for real.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

from transformers import GPT2Config, GPT2LMHeadModel

from lmforge.common.artifacts import ArtifactStore
from lmforge.common.events import Hyperparameters, ModelReadyV1, Topic
from lmforge.common.kafka import EventProducer
from lmforge.common.settings import KafkaSettings

from .stack import Stack

SMALL_GPT2 = {"n_positions": 256, "n_embd": 64, "n_layer": 2, "n_head": 2}


def save_small_gpt2(target: Path, corpus: list[str], seed: int = 0, **sizes: int) -> Path:
    """A randomly initialised GPT-2 (``SMALL_GPT2`` sizes unless given) with a BPE tokenizer
    trained on ``corpus``: the builtin model's shape, without its training."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(seed)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=special[0], bos_token=special[0], pad_token=special[1], unk_token=special[0]
    )
    config = GPT2Config(
        vocab_size=len(tok),
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **(SMALL_GPT2 | sizes),
    )
    GPT2LMHeadModel(config).save_pretrained(target)
    tok.save_pretrained(target)
    return target


async def publish_model(
    stack: Stack,
    model_name: str,
    weights: Path,
    *,
    val_perplexity: float = 1.5,
) -> str:
    """Store ``weights`` as a new run of ``model_name`` and announce it; returns the run id."""
    assert stack.broker is not None, "the stack is not started"
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    store = ArtifactStore(str(stack.workdir / "artifacts"))
    uri = await asyncio.to_thread(store.put_dir, weights, f"models/{model_name}/{run_id}")
    manifest = store.write_bytes(f"datasets/seeded/{run_id}/manifest.json", b'{"records": []}')
    event = ModelReadyV1(
        model_name=model_name,
        run_id=run_id,
        job_id=f"job-{run_id}",
        artifact_uri=uri,
        base_model="seeded",
        dataset="seeded",
        dataset_version=1,
        dataset_manifest_uri=manifest,
        hyperparameters=Hyperparameters(),
        metrics={"val_perplexity": val_perplexity},
    )
    async with EventProducer(KafkaSettings(bootstrap_servers=stack.broker.bootstrap_servers), "devstack") as producer:
        await producer.publish(Topic.MODEL_READY, event, key=model_name)
    return run_id


def publish_small_model(stack: Stack, model_name: str, corpus: list[str], **sizes: int) -> str:
    """``save_small_gpt2`` then ``publish_model``, from synchronous code."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_small_gpt2(Path(tmp), corpus, **sizes)
        return asyncio.run(publish_model(stack, model_name, weights))
