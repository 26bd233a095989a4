"""Small building blocks shared by the towers: parameters with logical axes, norms, activations."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from molmo_jax.model.sharding import shard

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]

normal_init = jax.nn.initializers.normal
zeros_init = jax.nn.initializers.zeros
ones_init = jax.nn.initializers.ones


def weight_init(mode: str, fan_in_std: float) -> Initializer:
    """A random init: normal with std 0.02 for "normal" (the released models' initializer_range), or
    with std `fan_in_std` for "fan_in"."""
    if mode == "normal":
        return normal_init(0.02)
    if mode != "fan_in":
        raise ValueError(f"unknown init {mode!r}; choose 'normal' or 'fan_in'")
    return normal_init(fan_in_std)


def kernel_init(mode: str, fan_in: int, residual_depth: int = 0) -> Initializer:
    """A kernel's random init (`weight_init`): for "fan_in" std 1/sqrt(fan_in), which keeps
    activations at unit scale whatever the width. `residual_depth` > 0 marks the last projection of a
    residual branch in a stack of that many blocks: its "fan_in" std is further divided by
    sqrt(2 * depth), so the residual stream does not grow with depth."""
    std = 1 / math.sqrt(fan_in)
    if residual_depth:
        std /= math.sqrt(2 * residual_depth)
    return weight_init(mode, std)


def param(
    rngs: nnx.Rngs, init: Initializer, shape: Sequence[int], axes: tuple[str | None, ...], dtype
) -> nnx.Param:
    """A parameter annotated with logical axis names (one per dimension).

    The names are mapped to mesh axes by the rules in `molmo_jax.model.sharding`; creation itself
    never places data, so the same module builds abstractly (eval_shape) or under any mesh.
    """
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match parameter shape {tuple(shape)}")
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=axes, eager_sharding=False)


def as_dtype(name_or_dtype) -> jnp.dtype:
    return jnp.dtype(name_or_dtype)


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, cast back, then scaled (OLMo / Qwen2 convention)."""

    def __init__(self, dim: int, *, eps: float, rngs: nnx.Rngs, param_dtype=jnp.float32, axis_name="norm"):
        self.eps = eps
        self.scale = param(rngs, ones_init, (dim,), (axis_name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * self.scale[...].astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias, statistics in float32 (CLIP ViT convention)."""

    def __init__(self, dim: int, *, eps: float, rngs: nnx.Rngs, param_dtype=jnp.float32, axis_name="norm"):
        self.eps = eps
        self.scale = param(rngs, ones_init, (dim,), (axis_name,), param_dtype)
        self.bias = param(rngs, zeros_init, (dim,), (axis_name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class Dense(nnx.Module):
    """x @ kernel (+ bias) with the kernel stored [in, out] and cast to the compute dtype."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        axes: tuple[str | None, str | None],
        use_bias: bool,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
        init: Initializer | None = None,
    ):
        self.kernel = param(rngs, init or normal_init(0.02), (in_dim, out_dim), axes, param_dtype)
        self.bias = param(rngs, zeros_init, (out_dim,), (axes[1],), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...].astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


def call_rematerialized(module: nnx.Module, *args):
    """`module(*args)` whose activations are recomputed in the backward pass (jax.checkpoint over the
    module's state, so it also works inside loops such as the crop groups' `lax.map`)."""
    graphdef, state = nnx.split(module)
    return jax.checkpoint(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "silu":
        return jax.nn.silu
    raise ValueError(f"unknown activation {name!r}")


def attention_weights(scores: jax.Array) -> jax.Array:
    """Softmax in float32 over the last axis."""
    return jax.nn.softmax(scores.astype(jnp.float32), axis=-1)


__all__ = ["Dense", "LayerNorm", "RMSNorm", "activation", "as_dtype", "param", "shard"]
