"""Per-device memory of one training step of a Molmo preset: full fine-tuning vs LoRA.

Nothing is allocated: the model is built with `nnx.eval_shape`, the optimizer state with
`jax.eval_shape`, and the jitted step (parameters / adapters and optimizer state donated) is
compiled ahead of time on abstract inputs; the table reports XLA's `memory_analysis()` of the
compiled step on the default backend (one device): arguments, outputs, donated aliases, temporaries
and peak = arguments + outputs - aliased + temporaries.

    python benchmarks/lora_memory.py [--preset molmo_7b_d] [--crops 12] [--rank 16] [--remat vit,llm]
        [--json]

The batch is one example of the preset's preprocessing of an image large enough for `--crops`
crops (plus the global crop), a short pointing prompt and a 64-token answer. Rows:
  full      fp32 master weights, bf16 compute, AdamW on every trainable group (the original recipe)
  lora-llm  bf16 frozen base, bf16 compute, fp32 rank-r adapters on LLM attention + MLP, AdamW
  lora-all  as lora-llm, adapters also on the ViT and connector linears
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from molmo_jax.model.config import get_preset
from molmo_jax.model.molmo import Molmo
from molmo_jax.train import lora
from molmo_jax.train.optimizer import GroupSettings, OptimizerSettings, build_optimizer
from molmo_jax.train.step import StepSettings, make_train_step

ANSWER_TOKENS = 64


def batch_shapes(preset: str, crops: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of a one-example training batch from the processor (numbers only, then abstract)."""
    from molmo_jax.preprocess.processor import MolmoProcessor

    processor = MolmoProcessor.from_pretrained(preset, max_crops=crops)
    image = np.zeros((1536, 2048, 3), np.uint8)  # 4:3 and large: a 3 x 4 tiling at max_crops 12
    ex = processor(images=[image], text="Point to the dog.")
    t = len(ex["input_ids"]) + ANSWER_TOKENS
    c, p, d = ex["images"].shape
    n_tok = ex["image_input_idx"].shape[-1]
    s = jax.ShapeDtypeStruct
    return {
        "input_ids": s((1, t), jnp.int32),
        "target_tokens": s((1, t), jnp.int32),
        "loss_masks": s((1, t), jnp.float32),
        "images": s((1, c, p, d), jnp.float32),
        "image_masks": s((1, c, p), jnp.float32),
        "image_input_idx": s((1, c, n_tok), jnp.int32),
    }


def analyse(fn, args, donate) -> dict:
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    m = compiled.memory_analysis()
    out = {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "aliased": m.alias_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
    }
    out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
    out["compile_s"] = round(time.perf_counter() - start, 1)
    return out


def nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="molmo_7b_d")
    ap.add_argument("--crops", type=int, default=12)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rows", default="full,lora-llm,lora-all")
    ap.add_argument("--remat", default="", help="comma list of towers to rematerialise (vit,llm)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    batch = batch_shapes(args.preset, args.crops)
    settings = StepSettings()
    rows = {}
    for row in args.rows.split(","):
        param_dtype = "float32" if row == "full" else "bfloat16"
        config = get_preset(args.preset).replace(dtype="bfloat16", param_dtype=param_dtype, crop_chunk=0)
        if args.remat:
            config = config.replace(remat=tuple(args.remat.split(",")))
        model = nnx.eval_shape(lambda config=config: Molmo(config, rngs=nnx.Rngs(0)))
        graphdef, params = nnx.split(model, nnx.Param)
        if row == "full":
            opt = OptimizerSettings(
                groups={g: GroupSettings(1e-5, 10) for g in ("connector", "vit", "llm")}, total_steps=100
            )
            tx = build_optimizer(opt, params)
            opt_state = jax.eval_shape(tx.init, params)
            step = make_train_step(graphdef, tx, settings)
            res = analyse(step, (params, opt_state, batch), donate=(0, 1))
            res["trainable"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
            res["weights"] = nbytes(params)
        else:
            targets = lora.DEFAULT_TARGETS if row == "lora-llm" else lora.ALL_LINEAR_TARGETS
            cfg = lora.LoRAConfig(rank=args.rank, alpha=2.0 * args.rank, targets=targets)
            adapters = lora.abstract_adapters(params, cfg)
            tx = lora.build_lora_optimizer(1e-4, total_steps=100, warmup_steps=10)
            opt_state = jax.eval_shape(tx.init, adapters)
            step = lora.make_lora_train_step(graphdef, tx, settings, cfg)
            res = analyse(step, (adapters, opt_state, params, batch), donate=(0, 1))
            res["trainable"] = lora.count_params(adapters)
            res["weights"] = nbytes(params) + nbytes(adapters)
        rows[row] = res
        if not args.json:
            print(f"# {row}: compiled in {res['compile_s']} s", flush=True)

    t = batch["input_ids"].shape[1]
    c = batch["images"].shape[1]
    device = jax.devices()[0]
    if args.json:
        print(json.dumps({"device": str(device), "seq_len": t, "crops": c, "rows": rows}, indent=2))
        return
    gib = 2**30
    print(
        f"\n{args.preset}, batch 1, {c} crops ({args.crops} + global), {t} tokens, rank {args.rank}, "
        f"remat {args.remat or 'none'}, "
        f"one {device.platform} device ({device.device_kind})\n"
    )
    print("| setup | trainable params | weights GiB | arguments GiB | temporaries GiB | peak GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['trainable']:,} | {r['weights'] / gib:.2f} | {r['arguments'] / gib:.2f} | "
            f"{r['temporaries'] / gib:.2f} | {r['peak'] / gib:.2f} |"
        )


if __name__ == "__main__":
    main()
