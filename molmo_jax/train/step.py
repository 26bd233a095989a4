"""The training step: masked weighted cross-entropy + z-loss, gradient accumulation as a scan over
micro-batches, AdamW update — one pure function to `jax.jit` with shardings and donation.

Batches are dicts of arrays: `input_ids`, `target_tokens`, `loss_masks` `[B, T]` (the processor's
training format: targets unshifted, loss weights on answer tokens and their EOS), optionally
`images` `[B, C, P, patch_dim]`, `image_masks`, `image_input_idx`, `position_ids`,
`subsegment_ids`.

Residual dropout (rates in the model's `LLMConfig`) draws its masks from
`fold_in(fold_in(key(seed), step_index), micro_batch)`, so a resumed run repeats them exactly. MoE
models add `moe_load_balance_weight * load_balance + moe_router_z_weight * router_z` to the loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from molmo_jax.model.sharding import use_mesh_rules
from molmo_jax.train.loss import loss_positions, masked_lm_loss
from molmo_jax.train.optimizer import group_norms

MODEL_KEYS = ("images", "image_masks", "image_input_idx")
OPTIONAL_KEYS = ("position_ids", "subsegment_ids")


@dataclasses.dataclass(frozen=True)
class StepSettings:
    z_loss_weight: float = 1e-4
    grad_accum_steps: int = 1
    # Logits are computed at most at this many loss positions per example (None: every position).
    loss_budget: int | None = None
    frozen: tuple[str, ...] = ("llm.embedding",)
    seed: int = 0  # dropout masks: fold_in(fold_in(key(seed), step_index), micro-batch index)
    moe_load_balance_weight: float = 0.0
    moe_router_z_weight: float = 0.0


def microbatch_loss(
    graphdef,
    params,
    batch: dict,
    settings: StepSettings,
    normalizer: jax.Array,
    dropout_rng: jax.Array | None = None,
    n_micro: int = 1,
):
    """Summed weighted loss of one micro-batch divided by the global `normalizer` (plus its share,
    1 / n_micro, of the weighted MoE auxiliary losses). `dropout_rng` None: no dropout."""
    model = nnx.merge(graphdef, params)
    weights = jnp.maximum(batch["loss_masks"].astype(jnp.float32), 0.0)
    budget = settings.loss_budget or weights.shape[1]
    positions, real = loss_positions(weights, budget)
    kwargs = {k: batch[k] for k in MODEL_KEYS + OPTIONAL_KEYS if k in batch}
    out = model(
        batch["input_ids"],
        **kwargs,
        logit_positions=positions,
        deterministic=dropout_rng is None,
        dropout_rng=dropout_rng,
        response_mask=weights > 0,
    )
    logits = out.logits
    targets = jnp.take_along_axis(batch["target_tokens"], positions, axis=1)
    w = jnp.take_along_axis(weights, positions, axis=1) * real
    loss, metrics = masked_lm_loss(
        logits, targets, w, z_loss_weight=settings.z_loss_weight, normalizer=normalizer
    )
    n_loss = jnp.sum(weights > 0, axis=1)
    metrics["loss_tokens_dropped"] = jnp.sum(jnp.maximum(n_loss - budget, 0))
    if out.aux_losses:
        lb, rz = out.aux_losses["load_balance"] / n_micro, out.aux_losses["router_z"] / n_micro
        loss = loss + settings.moe_load_balance_weight * lb + settings.moe_router_z_weight * rz
        metrics["moe_load_balance"], metrics["moe_router_z"] = lb, rz
    return loss, metrics


def make_train_step(
    graphdef, tx: optax.GradientTransformation, settings: StepSettings, mesh=None
) -> Callable:
    """`step(params, opt_state, batch, step_index=0) -> (params, opt_state, metrics)` (pure; jit
    it). `step_index` (the global step) only seeds the dropout masks."""

    def step(params, opt_state, batch, step_index=0):
        step_rng = jax.random.fold_in(jax.random.key(settings.seed), step_index)
        with use_mesh_rules(mesh) if mesh is not None else contextlib.nullcontext():
            normalizer = jnp.maximum(jnp.sum(jnp.maximum(batch["loss_masks"].astype(jnp.float32), 0.0)), 1e-6)
            grad_fn = jax.value_and_grad(microbatch_loss, argnums=1, has_aux=True)
            n = settings.grad_accum_steps
            if n == 1:
                rng = jax.random.fold_in(step_rng, 0)
                (loss, metrics), grads = grad_fn(graphdef, params, batch, settings, normalizer, rng)
            else:
                micro = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)

                def body(carry, xs):
                    mb, i = xs
                    grads_acc, loss_acc, metrics_acc = carry
                    rng = jax.random.fold_in(step_rng, i)
                    (loss, m), g = grad_fn(graphdef, params, mb, settings, normalizer, rng, n)
                    grads_acc = jax.tree.map(jnp.add, grads_acc, g)
                    metrics_acc = jax.tree.map(jnp.add, metrics_acc, m)
                    return (grads_acc, loss_acc + loss, metrics_acc), None

                zeros = jax.tree.map(jnp.zeros_like, params)
                first = jax.tree.map(lambda x: x[0], micro)
                shapes = jax.eval_shape(
                    lambda: microbatch_loss(graphdef, params, first, settings, normalizer, None, n)[1]
                )
                init_m = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), shapes)
                (grads, loss, metrics), _ = jax.lax.scan(
                    body, (zeros, jnp.float32(0.0), init_m), (micro, jnp.arange(n))
                )
            metrics = dict(metrics, loss=loss, **group_norms(grads, settings.frozen))
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, metrics

    return step


def check_batch(batch: dict, grad_accum_steps: int) -> None:
    """Fail early, naming the key, when a batch cannot feed the step."""
    for key in ("input_ids", "target_tokens", "loss_masks"):
        if key not in batch:
            raise KeyError(f"training batch has no {key!r} (keys: {sorted(batch)})")
    b = batch["input_ids"].shape[0]
    if b % grad_accum_steps:
        raise ValueError(f"batch size {b} is not divisible by grad_accum_steps={grad_accum_steps}")
