"""The original's optimiser: AdamW with per-group learning rates, warmups and gradient clipping.

Groups come from parameter paths (MOLMO_SPEC §8.1): `connector` (pooling, projector, pad
embeddings and the LLM's `new_embedding` rows), `vit` (the vision tower), `llm` (the rest of the
decoder) and `frozen` (the base token embedding, which the original never trains). Each group:
linear warmup from 0, cosine decay to 10% of the peak at the last step, then constant; its
gradients clipped by their own global norm with coefficient min(1, max_norm / (norm + 1e-6)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

GROUPS = ("connector", "vit", "llm", "frozen")


@dataclasses.dataclass(frozen=True)
class GroupSettings:
    peak_lr: float
    warmup_steps: int


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    groups: Mapping[str, GroupSettings]
    total_steps: int
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-6
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    final_lr_fraction: float = 0.1
    frozen: tuple[str, ...] = ("llm.embedding",)  # path prefixes never updated


def group_of(path: str, frozen: tuple[str, ...] = ("llm.embedding",)) -> str:
    """Group label of a parameter path such as `llm.blocks.3.attn.q`."""
    if any(path == f or path.startswith(f + ".") for f in frozen):
        return "frozen"
    if path.startswith("connector.") or path == "llm.new_embedding":
        return "connector"
    if path.startswith("vision."):
        return "vit"
    if path.startswith("llm."):
        return "llm"
    raise ValueError(f"parameter {path!r} belongs to no optimiser group")


def label_tree(params: nnx.State, frozen: tuple[str, ...] = ("llm.embedding",)):
    """A pytree of group labels with the structure of `params`."""
    flat = nnx.to_flat_state(params)
    labels = [(p, group_of(".".join(map(str, p)), frozen)) for p, _ in flat]
    return nnx.from_flat_state(labels)


def schedule(peak: float, warmup: int, total: int, final_fraction: float = 0.1) -> optax.Schedule:
    """lr(s) for optimiser step s (the first update is s = 1 as in the original)."""

    def fn(count):
        s = count.astype(jnp.float32) + 1.0
        warm = peak * s / max(warmup, 1)
        frac = jnp.clip((s - warmup) / max(total - warmup, 1), 0.0, 1.0)
        cos = peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + jnp.cos(jnp.pi * frac)))
        return jnp.where(s < warmup, warm, cos)

    return fn


def clip_by_group_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale the updates by min(1, max_norm / (global_norm + 1e-6)) (the original's rule)."""

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build_optimizer(settings: OptimizerSettings, params: nnx.State) -> optax.GradientTransformation:
    transforms = {}
    for group in GROUPS:
        if group == "frozen":
            transforms[group] = optax.set_to_zero()
            continue
        if group not in settings.groups:
            raise ValueError(f"optimizer.groups has no settings for group {group!r}")
        g = settings.groups[group]
        chain = [] if settings.max_grad_norm is None else [clip_by_group_norm(settings.max_grad_norm)]
        chain.append(
            optax.adamw(
                schedule(g.peak_lr, g.warmup_steps, settings.total_steps, settings.final_lr_fraction),
                b1=settings.b1,
                b2=settings.b2,
                eps=settings.eps,
                weight_decay=settings.weight_decay,
            )
        )
        transforms[group] = optax.chain(*chain)
    return optax.multi_transform(transforms, label_tree(params, settings.frozen))


def group_norms(grads: nnx.State, frozen: tuple[str, ...] = ("llm.embedding",)) -> dict[str, jax.Array]:
    """Global gradient norm of each group (for metrics)."""
    sq: dict[str, jax.Array] = {}
    for path, g in nnx.to_flat_state(grads):
        group = group_of(".".join(map(str, path)), frozen)
        value = g.get_value() if hasattr(g, "get_value") else g
        sq[group] = sq.get(group, 0.0) + jnp.sum(jnp.square(value.astype(jnp.float32)))
    return {f"grad_norm/{k}": jnp.sqrt(v) for k, v in sq.items() if k != "frozen"}


def current_lrs(settings: OptimizerSettings, step: jax.Array) -> dict[str, jax.Array]:
    return {
        f"lr/{name}": schedule(g.peak_lr, g.warmup_steps, settings.total_steps, settings.final_lr_fraction)(
            step
        )
        for name, g in settings.groups.items()
    }
