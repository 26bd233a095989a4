"""Teacher-forced answer loss on a held-out split, optionally with every image blanked.

Generated-answer metrics move only once a model is good; the loss of the reference answers moves as
soon as the model draws any information from its images. Comparing ``blank_images=False`` with
``True`` is therefore the sensitive form of the blank-image control.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

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


def heldout_examples(
    processor,
    data_dir: str | os.PathLike,
    task: str,
    *,
    split: str = "validation",
    max_examples: int | None = None,
    blank_images: bool = False,
    seed: int = 0,
) -> Iterator[tuple[dict, dict]]:
    """(task example, processed example) for the first `max_examples` records of `task`'s `split`, in
    record order, one at a time; record i draws its randomness from ``RandomState(seed + i)``, the
    same with and without `blank_images` (the task example keeps the real image)."""
    resolved = resolve_task(task, data_dir)
    source = prepare.open_prepared(data_dir, resolved.prepared, split)
    total = len(source) if max_examples is None else min(len(source), int(max_examples))
    if total == 0:
        raise ValueError(f"{task}: split {split!r} of {data_dir} has no examples")
    for i in range(total):
        rs = np.random.RandomState(seed + i)
        example = resolved(source[i], rs)
        shown = example
        if blank_images and example.get("image") is not None:
            shown = dict(example, image=blank_like(example["image"]))
        yield example, processor.process_example(shown, for_inference=False, rng=rs)


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
    kw = dict(split=split, max_examples=max_examples, blank_images=blank_images, seed=seed)
    pairs = heldout_examples(processor, data_dir, task, **kw)
    icfg = processor.image_config
    crops = max_crops if max_crops is not None else icfg.max_crops + 1
    shape = (sequence_length, crops, icfg.patches_per_crop, icfg.patch_dim, icfg.tokens_per_crop)
    nll_sum, tokens, total = 0.0, 0.0, 0
    while chunk := list(itertools.islice(pairs, batch_size)):
        total += len(chunk)
        batch = fit_batch([processed for _, processed in chunk], batch_size, shape)
        keys = ("input_ids", "target_tokens", "loss_masks", "position_ids", *IMAGE_KEYS)
        s, n = _summed_nll(model, {k: jnp.asarray(batch[k]) for k in keys if k in batch})
        nll_sum, tokens = nll_sum + float(s), tokens + float(n)
    if tokens == 0:
        raise ValueError(f"{task}: no answer tokens in the first {total} examples of split {split!r}")
    return {"loss": nll_sum / tokens, "tokens": int(tokens), "examples": total}
