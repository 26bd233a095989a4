"""Training losses: masked, weighted next-token cross-entropy with z-loss, as the original.

The original scores `logits[t]` against `target_tokens[t]` with `loss_masks[t]` as weights (0 on
prompts and image tokens, the per-example weight on answers), divides by the sum of the weights
over the (global) batch, and adds `z_loss_weight * logsumexp(logits)^2` with the same weighting.
Logits are only computed at the positions that carry loss (`loss_positions`), a small part of a
Molmo sequence, which saves most of the LM-head work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def loss_positions(loss_masks: jax.Array, budget: int) -> tuple[jax.Array, jax.Array]:
    """Indices `[B, budget]` of the positions with a non-zero loss mask (in order) and whether each
    slot is real. Rows with more than `budget` such positions raise at trace time only when static;
    choose `budget` >= the longest answer span (the sequence length is always safe)."""

    def one(mask):
        idx = jnp.nonzero(mask > 0, size=budget, fill_value=0)[0]
        return idx, jnp.arange(budget) < jnp.sum(mask > 0)

    return jax.vmap(one)(loss_masks)


def cross_entropy_and_z(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-position NLL and logsumexp^2 from float32 logits `[..., V]` and targets `[...]`."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    safe = jnp.clip(targets, 0, logits.shape[-1] - 1)  # padding / unscored positions hold any id
    target_logit = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    return lse - target_logit, jnp.square(lse)


def masked_lm_loss(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    *,
    z_loss_weight: float = 1e-4,
    normalizer: jax.Array | float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted mean NLL (+ z-loss) over positions with weight > 0; `normalizer` defaults to the sum
    of the weights (pass the global-batch sum when micro-batching)."""
    nll, z = cross_entropy_and_z(logits, targets)
    weights = jnp.maximum(weights.astype(jnp.float32), 0.0)
    denom = jnp.sum(weights) if normalizer is None else normalizer
    denom = jnp.maximum(denom, 1e-6)
    ce = jnp.sum(jnp.where(weights > 0, nll * weights, 0.0)) / denom
    zl = jnp.sum(jnp.where(weights > 0, z * weights, 0.0)) / denom
    return ce + z_loss_weight * zl, {"cross_entropy": ce, "z_loss": zl, "tokens": jnp.sum(weights > 0)}
