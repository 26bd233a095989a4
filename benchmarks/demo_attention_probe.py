"""Where a demo checkpoint's answer tokens look: how much of their attention goes to image tokens,
and how concentrated it is there.

For held-out examples of one task it runs the teacher-forced forward pass and, for every LLM layer
and query head, averages over the answer tokens (those with loss weight): the attention mass on
image tokens, the entropy of the attention restricted to image tokens divided by log(image tokens)
(1.0: spread evenly over the whole image; spread evenly over ten tokens it would be
log(10)/log(89) = 0.51 at the demo's 89 image tokens) and the largest image token's share as a
multiple of the even share. On ``pixmo_points_eval`` (held-out scenes with a mask per asked-for
object) it also gives the lift on the objects: the share of the image attention that lands on tokens
whose pixels (in any crop, cut exactly as the image is) touch an asked-for object, divided by those
tokens' share of all image tokens (1.0: no preference for the asked-for objects). The same with
every image blanked is the reference.

    python benchmarks/demo_attention_probe.py demo_out/stage2/run/hf \
        [--data-dir demo_out/data/prepared] [--task pixmo_points_eval] [--examples 16]
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

from molmo_jax.checkpoints.hf import load_pretrained
from molmo_jax.data.pipeline import IMAGE_KEYS, fit_batch
from molmo_jax.eval.heldout_loss import heldout_examples
from molmo_jax.model import llm
from molmo_jax.preprocess.image import image_to_inputs, normalize_pixels
from molmo_jax.preprocess.processor import MolmoProcessor


class AttentionRecorder:
    """Wraps ``llm.Attention.__call__`` and keeps each call's probabilities ``[B, heads, T, S]``,
    recomputed from the same inputs (eager, teacher-forced passes without a KV cache only)."""

    def __init__(self):
        self.probs: list[np.ndarray] = []
        self._call = llm.Attention.__call__

    def __enter__(self):
        call, probs = self._call, self.probs

        def recording(module, x, sin, cos, bias, cache=None, cache_index=None):
            q = llm.apply_rope(module._project(x, module.q, module.q_bias, module.q_norm), sin, cos)
            k = llm.apply_rope(module._project(x, module.k, module.k_bias, module.k_norm), sin, cos)
            group = q.shape[2] // k.shape[2]
            k = jnp.repeat(k, group, axis=2)  # query head i reads kv head i // group
            scores = jnp.einsum("BTNH,BSNH->BNTS", q, k) / math.sqrt(q.shape[-1])
            probs.append(np.asarray(jax.nn.softmax(scores + bias[:, None], axis=-1)))
            return call(module, x, sin, cos, bias, cache, cache_index)

        llm.Attention.__call__ = recording
        return self

    def __exit__(self, *exc):
        llm.Attention.__call__ = self._call


def batch_of(
    processor: MolmoProcessor, data_dir: str, task: str, n: int, blank: bool
) -> tuple[dict, list[np.ndarray | None]]:
    """The first `n` held-out examples as one batch, and each one's asked-for objects as one
    ``[H, W]`` mask (None where there is none)."""
    examples, masks = [], []
    for example, processed in heldout_examples(processor, data_dir, task, max_examples=n, blank_images=blank):
        object_masks = example.get("metadata", {}).get("masks")
        # None also for scenes without an asked-for object (their answer has no points)
        masks.append(np.asarray(object_masks, bool).any(0) if object_masks else None)
        examples.append(processed)
    cfg = processor.image_config
    length = max(len(e["input_ids"]) for e in examples)
    crops = max(len(e["images"]) for e in examples)
    shape = (length, crops, cfg.patches_per_crop, cfg.patch_dim, cfg.tokens_per_crop)
    return fit_batch(examples, len(examples), shape), masks


def target_tokens(batch: dict, masks: list[np.ndarray | None], processor: MolmoProcessor) -> np.ndarray:
    """[B, S] True at image tokens whose pooled patches touch the example's mask: the mask goes
    through the same crops as its image (white on black), so every crop's tokens are placed exactly."""
    cfg = processor.image_config
    half = normalize_pixels(np.full((1, 1, 3), 0.5, np.float32), cfg)[0, 0]  # mid-grey, normalised
    side, pool = cfg.patches_per_side, int(round(math.sqrt(cfg.patches_per_crop // cfg.tokens_per_crop)))
    out = np.zeros(batch["input_ids"].shape, bool)
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        rgb = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=-1)
        crops = image_to_inputs(rgb, cfg, processor.image_token_ids).crops  # [C, P, D], normalised
        bright = crops.reshape(len(crops), cfg.patches_per_crop, -1, 3) > half
        touched = bright.any(axis=(2, 3)).reshape(len(crops), side // pool, pool, side // pool, pool)
        touched = touched.any(axis=(2, 4)).reshape(len(crops), -1)  # [C, tokens per crop]
        idx = batch["image_input_idx"][i, : len(crops)]
        out[i, idx[touched & (idx >= 0)]] = True
    return out


def attention_summary(model, batch: dict, targets: np.ndarray) -> list[list[tuple[float, ...]]]:
    """Per layer, per head: (image mass, normalised entropy over image tokens, max / even share,
    lift on the target tokens; nan without targets)."""
    answer = batch["loss_masks"] > 0
    image = np.zeros(answer.shape, bool)
    for i, idx in enumerate(batch["image_input_idx"].reshape(len(answer), -1)):
        image[i, idx[idx >= 0]] = True
    n_image = image.sum(1, keepdims=True)  # [B, 1]
    has_targets = targets.any(1)
    target_share = targets.sum(1, keepdims=True) / n_image  # [B, 1]
    kwargs = {k: jnp.asarray(batch[k]) for k in (*IMAGE_KEYS, "position_ids")}
    with AttentionRecorder() as rec:
        model(jnp.asarray(batch["input_ids"]), **kwargs)
    out = []
    for probs in rec.probs:
        heads = []
        for h in range(probs.shape[1]):
            p = probs[:, h] * image[:, None, :]  # [B, T, S], image keys only
            mass = p.sum(-1)
            q = p / np.maximum(mass[..., None], 1e-12)
            entropy = -(q * np.log(np.maximum(q, 1e-12))).sum(-1) / np.log(n_image)
            peak = q.max(-1) * n_image
            lift = (q * targets[:, None, :]).sum(-1) / np.maximum(target_share, 1e-12)
            scored = answer & has_targets[:, None]
            stats = [float(v[answer].mean()) for v in (mass, entropy, peak)]
            heads.append((*stats, float(lift[scored].mean()) if scored.any() else float("nan")))
        out.append(heads)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a demo HF export")
    ap.add_argument("--data-dir", default="demo_out/data/prepared", help="the demo's prepared data")
    ap.add_argument("--task", default="pixmo_points_eval", help="lift needs masks: pixmo_points_eval")
    ap.add_argument("--examples", type=int, default=16, help="held-out examples (validation split)")
    args = ap.parse_args()
    processor = MolmoProcessor.from_pretrained(args.checkpoint)
    model = load_pretrained(args.checkpoint)
    print(f"{args.task}: {args.examples} held-out examples, answer tokens' attention")
    print(f"{'':14}{'image mass':>22}{'entropy / log(n)':>22}{'max / even share':>22}{'object lift':>22}")
    print(f"{'layer head':14}" + f"{'real':>12}{'blank':>10}" * 4)
    summaries = []
    for blank in (False, True):
        batch, masks = batch_of(processor, args.data_dir, args.task, args.examples, blank)
        summaries.append(attention_summary(model, batch, target_tokens(batch, masks, processor)))
    real, blank = summaries
    for layer, (r_heads, b_heads) in enumerate(zip(real, blank, strict=True)):
        for head, (r, b) in enumerate(zip(r_heads, b_heads, strict=True)):
            cells = "".join(f"{r[j]:12.3f}{b[j]:10.3f}" for j in range(4))
            print(f"{layer:5d} {head:4d}   {cells}")


if __name__ == "__main__":
    main()
