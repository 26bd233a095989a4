"""CPU benchmark of the full training step (forward, backward, AdamW update with per-group clipping)
on the shared small configuration (shared/bench/README.md): step time, tokens/s, achieved GFLOP/s
and MFU against this machine's measured f32 matmul throughput.

    python -m benchmarks.train_step [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.model_step import ORIGINAL, bench_inputs, matmul_gflops, timeit
from molmo_jax.model.config import get_preset
from molmo_jax.model.molmo import Molmo
from molmo_jax.train.optimizer import GroupSettings, OptimizerSettings, build_optimizer
from molmo_jax.train.step import StepSettings, make_train_step


def training_batch(vocab: int) -> dict:
    """The benchmark inputs in the training format: loss on the text tokens after the image."""
    batch = bench_inputs(vocab)
    ids = np.asarray(batch["input_ids"])
    targets = np.concatenate([ids[:, 1:], np.full((ids.shape[0], 1), -1)], axis=1)
    first_text = int(np.max(batch["image_input_idx"])) + 3
    loss_masks = ((np.arange(ids.shape[1]) >= first_text - 1)[None] & (targets >= 0)).astype(np.float32)
    return {
        "input_ids": ids,
        "target_tokens": targets,
        "loss_masks": loss_masks,
        "images": batch["images"],
        "image_masks": batch["image_masks"],
        "image_input_idx": batch["image_input_idx"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = get_preset("bench")
    graphdef, params = nnx.split(Molmo(config, rngs=nnx.Rngs(0)), nnx.Param)
    settings = OptimizerSettings(
        groups={g: GroupSettings(1e-4, 10) for g in ("connector", "vit", "llm")}, total_steps=1000
    )
    tx = build_optimizer(settings, params)
    batch = {k: jnp.asarray(v) for k, v in training_batch(config.llm.vocab_size).items()}
    budget = int(np.max(np.sum(np.asarray(batch["loss_masks"]) > 0, axis=1)))
    step = make_train_step(graphdef, tx, StepSettings(loss_budget=budget))
    opt_state = tx.init(params)
    fn = jax.jit(step)
    # FLOPs from XLA's count of the same step with the crops unrolled (a loop body counts once).
    flat_graphdef = nnx.graphdef(Molmo(config.replace(crop_chunk=0), rngs=nnx.Rngs(0)))
    cost = (
        jax.jit(make_train_step(flat_graphdef, tx, StepSettings(loss_budget=budget)))
        .lower(params, opt_state, batch)
        .compile()
        .cost_analysis()
    )
    flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    step_s = timeit(lambda p, o, b: fn(p, o, b)[2]["loss"], params, opt_state, batch, repeats=args.repeats)
    matmul = matmul_gflops()
    tokens = int(np.sum(np.asarray(batch["input_ids"]) >= 0))
    result = {"step_s": step_s, "tokens_per_s": tokens / step_s, "gflops": flops / step_s / 1e9}
    result["mfu"] = result["gflops"] / matmul
    print(
        f"train step (small benchmark configuration, batch 2, {tokens} tokens): {step_s:.3f} s, "
        f"{result['tokens_per_s']:.0f} tokens/s"
    )
    print(
        f"  {result['gflops']:.1f} GFLOP/s ({flops / 1e9:.1f} GFLOP per step) = "
        f"{100 * result['mfu']:.0f}% of the "
        f"{matmul:.0f} GFLOP/s matmul"
    )
    print(
        f"  original forward+backward (no optimizer): {ORIGINAL['forward_backward_s']} s -> "
        f"x{ORIGINAL['forward_backward_s'] / step_s:.2f}"
    )
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in result.items()}))


if __name__ == "__main__":
    main()
