"""Vision-language connector: padding embeddings, 2x2 mean-query attention pooling, SwiGLU projector."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from molmo_jax.model.config import MolmoConfig
from molmo_jax.model.layers import Dense, attention_weights, param, shard, zeros_init


class AttentionPool(nnx.Module):
    """Pools each window of patches to one vector: query = window mean, keys/values = the patches."""

    def __init__(
        self, in_dim: int, out_dim: int, num_heads: int, head_dim: int, *, rngs, param_dtype, init=None
    ):
        inner = num_heads * head_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        kw = dict(use_bias=True, rngs=rngs, param_dtype=param_dtype, init=init)
        self.wq = Dense(in_dim, inner, axes=("vit_features", "vit_heads"), **kw)
        self.wk = Dense(in_dim, inner, axes=("vit_features", "vit_heads"), **kw)
        self.wv = Dense(in_dim, inner, axes=("vit_features", "vit_heads"), **kw)
        self.wo = Dense(inner, out_dim, axes=("vit_heads", "vit_embed"), **kw)

    def __call__(self, windows: jax.Array) -> jax.Array:
        """`[N, K, in_dim]` windows of K patches -> `[N, out_dim]`."""
        n, k, _ = windows.shape
        query = jnp.mean(windows, axis=1, keepdims=True)
        q = self.wq(query).reshape(n, 1, self.num_heads, self.head_dim)
        kk = self.wk(windows).reshape(n, k, self.num_heads, self.head_dim)
        v = self.wv(windows).reshape(n, k, self.num_heads, self.head_dim)
        scores = jnp.einsum("nqhd,nkhd->nhqk", q * (1 / math.sqrt(self.head_dim)), kk)
        probs = attention_weights(scores).astype(v.dtype)
        out = jnp.einsum("nhqk,nkhd->nqhd", probs, v).reshape(n, -1)
        return self.wo(out)


class SwiGLUProjector(nnx.Module):
    """y = w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, *, rngs, param_dtype, init=None):
        kw = dict(use_bias=False, rngs=rngs, param_dtype=param_dtype, init=init)
        self.w1 = Dense(in_dim, hidden, axes=("vit_embed", "mlp"), **kw)
        self.w3 = Dense(in_dim, hidden, axes=("vit_embed", "mlp"), **kw)
        self.w2 = Dense(hidden, out_dim, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.w2(jax.nn.silu(self.w1(x)) * self.w3(x))


def to_windows(features: jax.Array, grid: tuple[int, int], pool: tuple[int, int]) -> jax.Array:
    """`[N, gh*gw, F]` -> `[N, ph_count*pw_count, ph*pw, F]`, windows row-major, zero-padding odd grids."""
    n, _, f = features.shape
    gh, gw = grid
    ph, pw = pool
    x = features.reshape(n, gh, gw, f)
    pad_h, pad_w = (-gh) % ph, (-gw) % pw
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hh, ww = (gh + pad_h) // ph, (gw + pad_w) // pw
    x = x.reshape(n, hh, ph, ww, pw, f).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, hh * ww, ph * pw, f)


class Connector(nnx.Module):
    def __init__(self, config: MolmoConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        vis, con = config.vision, config.connector
        self.config = config
        feat_dim = vis.width * len(con.vit_layers)
        if con.padding_embed == "pad_and_partial_pad":
            self.pad_embed = param(
                rngs, zeros_init, (2, feat_dim), ("pad_kinds", "vit_features"), param_dtype
            )
        elif con.padding_embed in ("pad_embed", "regress"):
            self.pad_embed = param(rngs, zeros_init, (feat_dim,), ("vit_features",), param_dtype)
        else:
            self.pad_embed = None
        init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal") if con.init == "fan_in" else None
        self.image_pooling_2d = AttentionPool(
            feat_dim, vis.width, vis.num_heads, vis.head_dim, rngs=rngs, param_dtype=param_dtype, init=init
        )
        self.image_projector = SwiGLUProjector(
            vis.width, con.projector_hidden, config.llm.d_model, rngs=rngs, param_dtype=param_dtype, init=init
        )

    def add_padding_embeddings(self, features: jax.Array, image_masks: jax.Array) -> jax.Array:
        """features `[N, P, F]`, image_masks `[N, P]` (fraction of real pixels; -1 on padded crops)."""
        kind = self.config.connector.padding_embed
        if self.pad_embed is None:
            return features
        pad = self.pad_embed[...].astype(features.dtype)
        masks = image_masks.astype(features.dtype)[..., None]
        if kind == "pad_and_partial_pad":
            all_pad = (masks == 0).astype(features.dtype)
            partial = ((masks < 1) & (masks != 0)).astype(features.dtype)  # -1 counts as partial
            return features + pad[0] * all_pad + pad[1] * partial
        if kind == "pad_embed":
            return features + pad * (1 - masks)
        return features + pad * jnp.maximum(masks, 0)  # regress

    def __call__(
        self, features: jax.Array, image_masks: jax.Array | None, grid: tuple[int, int]
    ) -> tuple[jax.Array, jax.Array]:
        """features `[N, P, F]` (CLS removed) -> (pooled `[N, P', W]`, projected `[N, P', d_model]`)."""
        if image_masks is not None:
            features = self.add_padding_embeddings(features, image_masks)
        windows = to_windows(features, grid, self.config.connector.pool_size)
        n, m, k, f = windows.shape
        pooled = self.image_pooling_2d(windows.reshape(n * m, k, f)).reshape(n, m, -1)
        pooled = shard(pooled, ("batch", "length", "vit_embed"))
        return pooled, self.image_projector(pooled)
