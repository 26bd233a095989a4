"""CPU benchmark of KV-cache generation on the shared small configuration (shared/bench/README.md).

32 new greedy tokens per row at batch 1, 2 and 8 (rows are copies of the benchmark's two
examples), prefill timed separately; decode rate = new tokens / (total - prefill).

    python benchmarks/generate.py [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np
from flax import nnx

from benchmarks.model_step import bench_inputs
from molmo_jax.infer.decoding import Generator, SamplingConfig
from molmo_jax.model.config import get_preset
from molmo_jax.model.molmo import Molmo

NEW_TOKENS = 32
ORIGINAL = {"tokens_per_s": 30.4, "prefill_s": 1.14, "decode_tokens_per_s": 64.3}  # batch 2


def rows(batch: dict, n: int) -> dict:
    take = np.arange(n) % batch["input_ids"].shape[0]
    return {k: np.asarray(v)[take] for k, v in batch.items()}


def measure(gen: Generator, batch: dict, eos: int, repeats: int) -> dict:
    cfg = SamplingConfig(max_new_tokens=NEW_TOKENS)
    gen.generate(batch, eos, cfg)  # compile
    totals, prefills = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        out = gen.generate(batch, eos, cfg)
        totals.append(time.perf_counter() - start)
        assert out.tokens.shape[1] == NEW_TOKENS
        start = time.perf_counter()
        jax.block_until_ready(gen.prefill(batch, batch["input_ids"].shape[1] + NEW_TOKENS))
        prefills.append(time.perf_counter() - start)
    b = batch["input_ids"].shape[0]
    total, prefill = statistics.median(totals), statistics.median(prefills)
    return {
        "batch": b,
        "total_s": total,
        "prefill_s": prefill,
        "tokens_per_s": b * NEW_TOKENS / total,
        "decode_tokens_per_s": b * NEW_TOKENS / (total - prefill),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = get_preset("bench")
    gen = Generator(Molmo(config, rngs=nnx.Rngs(0)))
    base = bench_inputs(config.llm.vocab_size)
    base.pop("position_ids", None)
    eos = config.llm.embedding_size + 7  # never produced: every row runs the full 32 tokens
    results = {b: measure(gen, rows(base, b), eos, args.repeats) for b in (1, 2, 8)}
    print(
        f"greedy generation, {NEW_TOKENS} new tokens, prompt {base['input_ids'].shape[1]} tokens with 5 crops"
    )
    for b, r in results.items():
        print(
            f"  batch {b}: {r['total_s']:.3f} s total, prefill {r['prefill_s']:.3f} s, "
            f"{r['tokens_per_s']:.1f} tokens/s end to end, {r['decode_tokens_per_s']:.1f} tokens/s decoding"
        )
    r2 = results[2]
    for key in ("tokens_per_s", "decode_tokens_per_s"):
        print(f"  batch 2 {key}: x{r2[key] / ORIGINAL[key]:.2f} the original ({ORIGINAL[key]})")
    print(f"  batch 2 prefill: {r2['prefill_s']:.3f} s (original {ORIGINAL['prefill_s']} s)")
    if args.json:
        print(json.dumps({k: round(r2[k], 4) for k in ("prefill_s", "tokens_per_s", "decode_tokens_per_s")}))


if __name__ == "__main__":
    main()
