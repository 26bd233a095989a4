"""Vision towers. The released models use OpenAI CLIP ViT-L/14-336 with 23 of its 24 blocks.

A tower maps crops of flattened patches `[N, P, patch_dim]` to the hidden states of the blocks
the connector taps (`{layer_index: [N, tokens, width]}`). Towers register themselves in
`VISION_TOWERS` by `VisionConfig.kind`; adding one is one module plus one preset.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from molmo_jax.model.config import VisionConfig
from molmo_jax.model.layers import (
    Dense,
    LayerNorm,
    activation,
    attention_weights,
    call_rematerialized,
    kernel_init,
    param,
    shard,
    weight_init,
)

VISION_TOWERS: dict[str, Callable[..., nnx.Module]] = {}
# Towers defined in their own modules, imported when first asked for.
_TOWER_MODULES = {"dinov2": "molmo_jax.model.dinov2"}


def register_tower(*kinds: str):
    def wrap(cls):
        for kind in kinds:
            VISION_TOWERS[kind] = cls
        return cls

    return wrap


def build_tower(config: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32) -> nnx.Module:
    if config.kind not in VISION_TOWERS and config.kind in _TOWER_MODULES:
        importlib.import_module(_TOWER_MODULES[config.kind])
    if config.kind not in VISION_TOWERS:
        raise ValueError(
            f"vision.kind={config.kind!r} has no tower module; registered: {sorted(VISION_TOWERS)}"
        )
    return VISION_TOWERS[config.kind](config, rngs=rngs, param_dtype=param_dtype)


class ViTAttention(nnx.Module):
    """Multi-head self-attention with biased q/k/v/o projections (heads = contiguous slices)."""

    def __init__(self, config: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        inner = config.num_heads * config.head_dim
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        kw = dict(use_bias=True, rngs=rngs, param_dtype=param_dtype)
        w_in = kernel_init(config.init, config.width)
        w_out = kernel_init(config.init, inner, config.num_layers)
        self.wq = Dense(config.width, inner, axes=("vit_embed", "vit_heads"), init=w_in, **kw)
        self.wk = Dense(config.width, inner, axes=("vit_embed", "vit_heads"), init=w_in, **kw)
        self.wv = Dense(config.width, inner, axes=("vit_embed", "vit_heads"), init=w_in, **kw)
        self.wo = Dense(inner, config.width, axes=("vit_heads", "vit_embed"), init=w_out, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, _ = x.shape
        split = lambda y: y.reshape(n, t, self.num_heads, self.head_dim)
        q, k, v = split(self.wq(x)), split(self.wk(x)), split(self.wv(x))
        # Scaling q (not the scores) saves a pass over the [heads, tokens, tokens] array.
        scores = jnp.einsum("nqhd,nkhd->nhqk", q * (1 / math.sqrt(self.head_dim)), k)
        probs = attention_weights(scores).astype(v.dtype)
        out = jnp.einsum("nhqk,nkhd->nqhd", probs, v).reshape(n, t, -1)
        return self.wo(out)


class ViTMLP(nnx.Module):
    def __init__(self, config: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(use_bias=True, rngs=rngs, param_dtype=param_dtype)
        w1 = kernel_init(config.init, config.width)
        w2 = kernel_init(config.init, config.mlp_dim, config.num_layers)
        self.w1 = Dense(config.width, config.mlp_dim, axes=("vit_embed", "vit_mlp"), init=w1, **kw)
        self.w2 = Dense(config.mlp_dim, config.width, axes=("vit_mlp", "vit_embed"), init=w2, **kw)
        self.act = activation(config.activation)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.w2(self.act(self.w1(x)))


class ViTBlock(nnx.Module):
    """Pre-LN residual block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.attention_norm = LayerNorm(config.width, eps=config.norm_eps, **kw)
        self.attention = ViTAttention(config, **kw)
        self.ffn_norm = LayerNorm(config.width, eps=config.norm_eps, **kw)
        self.mlp = ViTMLP(config, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.attention_norm(x))
        x = x + self.mlp(self.ffn_norm(x))
        return shard(x, ("batch", "length", "vit_embed"))


def resize_position_grid(pos: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Bicubic, antialiased resize of a `[h, w, D]` position-embedding grid to `grid`."""
    if pos.shape[:2] == tuple(grid):
        return pos
    return jax.image.resize(pos, (*grid, pos.shape[-1]), method="bicubic", antialias=True)


@register_tower("clip", "metaclip", "siglip")
class CLIPViT(nnx.Module):
    """CLIP-style ViT on pre-flattened patches (values ordered row, column, channel). The config
    switches the CLS token, the pre-LN and the patch bias, which also makes it SigLIP's encoder."""

    block_cls = ViTBlock

    def __init__(self, config: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.config = config
        width, num_pos = config.width, config.pos_grid[0] * config.pos_grid[1] + int(config.use_cls_token)
        self.patch_embedding = Dense(
            config.patch_dim,
            width,
            axes=("vit_patch", "vit_embed"),
            use_bias=config.patch_bias,
            rngs=rngs,
            param_dtype=param_dtype,
            init=kernel_init(config.init, config.patch_dim),
        )
        embed_init = weight_init(config.init, width**-0.5)
        self.class_embedding = (
            param(rngs, embed_init, (width,), ("vit_embed",), param_dtype) if config.use_cls_token else None
        )
        self.positional_embedding = param(
            rngs, embed_init, (num_pos, width), ("vit_pos", "vit_embed"), param_dtype
        )
        self.pre_ln = (
            LayerNorm(width, eps=config.norm_eps, rngs=rngs, param_dtype=param_dtype)
            if config.use_pre_norm
            else None
        )
        self.blocks = nnx.List(
            [self.block_cls(config, rngs=rngs, param_dtype=param_dtype) for _ in range(config.num_layers)]
        )

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.config.use_cls_token)

    def embed(self, patches: jax.Array, grid: tuple[int, int]) -> jax.Array:
        """`[N, P, patch_dim]` -> `[N, prefix + P, width]` (patch, class and position embeddings)."""
        x = self.patch_embedding(patches)
        pos = self.positional_embedding[...].astype(x.dtype)
        n_prefix = self.num_prefix_tokens
        gh, gw = self.config.pos_grid
        grid_pos = resize_position_grid(pos[n_prefix:].reshape(gh, gw, -1), grid).reshape(
            grid[0] * grid[1], -1
        )
        x = x + grid_pos[None]
        if n_prefix:
            cls = (self.class_embedding[...].astype(x.dtype) + pos[0])[None, None]
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)
        if self.pre_ln is not None:
            x = self.pre_ln(x)
        return x

    def __call__(
        self,
        patches: jax.Array,
        layers: Sequence[int],
        grid: tuple[int, int] | None = None,
        remat: bool = False,
    ) -> dict[int, jax.Array]:
        """Run the blocks up to the deepest requested one.

        Args:
          patches: `[N, P, patch_dim]` crops of flattened patches.
          layers: block indices to return (negative counts from the last block).
        Returns: `{index: [N, prefix + P, width]}` keyed by the indices as given.
        """
        grid = grid or self.config.grid
        wanted = {i: i % self.config.num_layers for i in layers}
        x = self.embed(patches, grid)
        out: dict[int, jax.Array] = {}
        run = call_rematerialized if remat else (lambda blk, *a: blk(*a))
        for depth, block in enumerate(self.blocks):
            if depth > max(wanted.values()):
                break  # blocks past the deepest tap cannot change the output
            x = run(block, x)
            for key, idx in wanted.items():
                if idx == depth:
                    out[key] = x
        return out
