"""Teacher-forced answer loss on a held-out split, optionally with every image blanked.

Generated-answer metrics move only once a model is good; the loss of the reference answers moves as
soon as the model draws any information from its images. Comparing ``blank_images=False`` with
``True`` is therefore the sensitive form of the blank-image control.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from molmo_jax.data import prepare
from molmo_jax.data.pipeline import IMAGE_KEYS, fit_batch, resolve_task
from molmo_jax.eval.evaluate import blank_like
from molmo_jax.train.loss import cross_entropy_and_z


@nnx.jit
def _summed_nll(model, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Sum of the answer tokens' negative log-likelihoods and their count."""
    weights = jnp.maximum(batch["loss_masks"].astype(jnp.float32), 0.0)
    kwargs = {k: batch[k] for k in (*IMAGE_KEYS, "position_ids") if k in batch}
    logits = model(batch["input_ids"], **kwargs).logits
    nll, _ = cross_entropy_and_z(logits, batch["target_tokens"])
    scored = weights > 0
    return jnp.sum(jnp.where(scored, nll * weights, 0.0)), jnp.sum(jnp.where(scored, weights, 0.0))


def heldout_loss(
    model,
    processor,
    data_dir: str | os.PathLike,
    task: str,
    *,
    split: str = "validation",
    batch_size: int = 8,
    sequence_length: int = 2304,
    max_crops: int | None = None,
    max_examples: int | None = None,
    blank_images: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Mean cross-entropy per answer token of `task`'s `split` (examples in record order; the same
    per-example randomness with and without `blank_images`). Returns loss, tokens and examples."""
    resolved = resolve_task(task, data_dir)
    source = prepare.open_prepared(data_dir, resolved.prepared, split)
    total = len(source) if max_examples is None else min(len(source), int(max_examples))
    if total == 0:
        raise ValueError(f"{task}: split {split!r} of {data_dir} has no examples")
    icfg = processor.image_config
    crops = max_crops if max_crops is not None else icfg.max_crops + 1
    shape = (sequence_length, crops, icfg.patches_per_crop, icfg.patch_dim, icfg.tokens_per_crop)
    nll_sum, tokens = 0.0, 0.0
    for start in range(0, total, batch_size):
        examples = []
        for i in range(start, min(start + batch_size, total)):
            rs = np.random.RandomState(seed + i)
            example = resolved(source[i], rs)
            if blank_images and example.get("image") is not None:
                example = dict(example, image=blank_like(example["image"]))
            examples.append(processor.process_example(example, for_inference=False, rng=rs))
        batch = fit_batch(examples, batch_size, shape)
        keys = ("input_ids", "target_tokens", "loss_masks", "position_ids", *IMAGE_KEYS)
        s, n = _summed_nll(model, {k: jnp.asarray(batch[k]) for k in keys if k in batch})
        nll_sum, tokens = nll_sum + float(s), tokens + float(n)
    if tokens == 0:
        raise ValueError(f"{task}: no answer tokens in the first {total} examples of split {split!r}")
    return {"loss": nll_sum / tokens, "tokens": int(tokens), "examples": total}
