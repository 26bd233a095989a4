"""CPU benchmark of the model on the shared small configuration (shared/bench/README.md).

Prints median forward, vision-only and forward+backward times, the achieved GFLOP/s (XLA's own
FLOP count of the compiled forward), and this machine's f32 matmul GFLOP/s for comparison.

    python benchmarks/model_step.py [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from molmo_jax.model.config import get_preset
from molmo_jax.model.molmo import Molmo, count_params
from molmo_jax.train.loss import loss_positions, masked_lm_loss

ORIGINAL = {"forward_s": 1.61, "vision_s": 0.76, "forward_backward_s": 5.33}


def bench_inputs(vocab: int) -> dict[str, np.ndarray]:
    """Batch 2 of the Molmo-7B-D preprocessing of a 512x512 photograph (2x2 tiling: 4 crops + the
    global crop: BOS + 580 image tokens) and 63 text tokens = 644; row 1 three tokens shorter,
    right-padded."""
    from molmo_jax.preprocess.processor import MolmoProcessor

    rng = np.random.default_rng(0)
    image = _photo()
    processor = MolmoProcessor.from_pretrained("molmo_7b_d")
    prompt_words = " ".join(["describe"] * 200)
    rows = []
    for cut in (0, 3):
        ex = processor(images=[image], text=prompt_words)
        ids = ex["input_ids"]
        n_image = int(np.max(ex["image_input_idx"])) + 3  # BOS + image tokens up to the closing <im_end>
        text = rng.integers(10, vocab - 10, size=63 - cut)
        ex["input_ids"] = np.concatenate([ids[:n_image], text])
        ex["position_ids"] = np.arange(len(ex["input_ids"]))
        rows.append(ex)
    batch = processor.collate(rows)
    batch["input_ids"] = np.where(batch["input_ids"] >= vocab, batch["input_ids"] % vocab, batch["input_ids"])
    return batch


def _photo() -> np.ndarray:
    try:
        from skimage import data

        return data.astronaut()
    except ImportError:  # same shape is what matters for timing
        return np.random.default_rng(1).integers(0, 255, (512, 512, 3), dtype=np.uint8)


def forward_flops(config, params, ids, images, masks, idx) -> float:
    """XLA's FLOP count of the forward, compiled with all crops at once: the crop loop used on CPU
    computes the same thing, but cost analysis counts a loop body only once."""
    graphdef = nnx.graphdef(Molmo(config.replace(crop_chunk=0), rngs=nnx.Rngs(0)))
    fn = jax.jit(lambda p, *a: nnx.merge(graphdef, p)(*a).logits)
    cost = fn.lower(params, ids, images, masks, idx).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def timeit(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(n: int = 2048, repeats: int = 7) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    return 2 * n**3 / timeit(f, a, b, repeats=repeats) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    args = parser.parse_args()

    config = get_preset("bench")
    model = Molmo(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    batch = {k: jnp.asarray(v) for k, v in bench_inputs(config.llm.vocab_size).items()}
    ids, images, masks, idx = (
        batch["input_ids"],
        batch["images"],
        batch["image_masks"],
        batch["image_input_idx"],
    )

    def forward(params, ids, images, masks, idx):
        return nnx.merge(graphdef, params)(ids, images, masks, idx).logits

    def vision(params, images, masks):
        return nnx.merge(graphdef, params).encode_images(images, masks)[0]

    # Next-token cross-entropy on the text positions (position t predicts token t + 1); logits
    # are computed only where the loss is, as the training step does.
    targets = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)), constant_values=-1)
    first_text = int(np.max(np.asarray(idx))) + 3
    text = (jnp.arange(ids.shape[1]) >= first_text - 1)[None] & (targets >= 0)
    budget = int(np.max(np.sum(np.asarray(text), axis=1)))
    positions, real = loss_positions(text, budget)
    loss_targets = jnp.take_along_axis(targets, positions, axis=1)

    def loss(params, ids, images, masks, idx):
        logits = nnx.merge(graphdef, params)(ids, images, masks, idx, logit_positions=positions).logits
        return masked_lm_loss(logits, loss_targets, real.astype(jnp.float32), z_loss_weight=0.0)[0]

    fwd = jax.jit(forward)
    vis = jax.jit(vision)
    grad = jax.jit(jax.grad(loss))
    flops = forward_flops(config, params, ids, images, masks, idx)

    result = {
        "forward_s": timeit(fwd, params, ids, images, masks, idx, repeats=args.repeats),
        "vision_s": timeit(vis, params, images, masks, repeats=args.repeats),
        "forward_backward_s": timeit(grad, params, ids, images, masks, idx, repeats=args.repeats),
    }
    result["gflops"] = flops / result["forward_s"] / 1e9
    result["matmul_gflops"] = matmul_gflops()

    print(
        f"small benchmark configuration: {count_params(params) / 1e6:.1f} M parameters, "
        f"input_ids {tuple(ids.shape)}, images {tuple(images.shape)}, {jax.devices()[0].platform}"
    )
    for key in ("forward_s", "vision_s", "forward_backward_s"):
        print(
            f"  {key:20s} {result[key]:7.3f} s   original {ORIGINAL[key]:.2f} s   "
            f"speed-up x{ORIGINAL[key] / result[key]:.2f}"
        )
    print(f"  forward GFLOP/s      {result['gflops']:7.1f}   ({flops / 1e9:.1f} GFLOP per forward)")
    print(f"  f32 matmul GFLOP/s   {result['matmul_gflops']:7.1f}   (2048x2048, this machine)")
    print(
        f"  forward efficiency   {100 * result['gflops'] / result['matmul_gflops']:.0f}% of matmul throughput"
    )
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in result.items()}))


if __name__ == "__main__":
    main()
