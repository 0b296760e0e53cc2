"""Benchmark: one decoding step of the tiny model on one CPU thread next to torch's default thread count.

The reference `tensorrt_llm` model decodes one token of one request per step. This times that step (the
built-in tiny model's shape, random weights: the cost does not depend on them) with `torch.set_num_threads(1)`
and with torch's default (one thread per core), alternating in rounds so the host's load hits both.

    .venv/bin/python benchmarks/reference_threads.py [--rounds 5] [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache, Qwen3Config

from trtforge.reference.tiny import MODEL_SHAPE, TOKENIZER_VOCAB_SIZE


def step_ms(model: torch.nn.Module, threads: int, steps: int) -> float:
    """Milliseconds per one-token step after an 8-token prompt, on `threads` intra-op threads."""
    torch.set_num_threads(threads)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([list(range(1, 9))]), use_cache=True, logits_to_keep=1, cache=cache)
        started = time.perf_counter()
        for _ in range(steps):
            model(input_ids=torch.tensor([[5]]), use_cache=True, logits_to_keep=1, cache=cache)
        return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    default = torch.get_num_threads()
    model = AutoModelForCausalLM.from_config(
        Qwen3Config(**MODEL_SHAPE, vocab_size=TOKENIZER_VOCAB_SIZE)
    ).eval()
    times: dict[int, list[float]] = {1: [], default: []}
    for _ in range(args.rounds):
        for threads in times:
            times[threads].append(step_ms(model, threads, args.steps))
    ratios = [d / o for o, d in zip(times[1], times[default], strict=True)]
    print("| intra-op threads | ms per step (median) | min | max |")
    print("|---|---|---|---|")
    for threads, values in times.items():
        print(f"| {threads} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    print(f"\n{default} threads ÷ 1 thread, median of per-round ratios: {statistics.median(ratios):.1f}×")


if __name__ == "__main__":
    main()
