"""The Molmo model: vision tower -> connector -> image features ADDED to the token embeddings at
`image_input_idx` -> decoder LLM -> logits."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from molmo_jax.model.config import MolmoConfig
from molmo_jax.model.connector import Connector
from molmo_jax.model.layers import as_dtype
from molmo_jax.model.llm import Decoder, KVCache, attention_bias, dropout_keep_prob, positions_from_valid
from molmo_jax.model.vit import build_tower


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MolmoOutput:
    """`logits` `[B, T, embedding_size]` (float32). The rest is filled with `return_intermediates`:
    `hidden_states` `[L + 1, B, T, D]`, `vit_selected` `[n_taps, B, C, tokens, W]`,
    `pooled_features` `[B, C, P', W]`, `image_features` `[B, C, P', D]`, and MoE routing arrays.
    `aux_losses` holds the unweighted MoE losses (`load_balance`, `router_z`) of MoE models."""

    logits: jax.Array
    hidden_states: jax.Array | None = None
    vit_selected: jax.Array | None = None
    pooled_features: jax.Array | None = None
    image_features: jax.Array | None = None
    extras: dict = dataclasses.field(default_factory=dict)
    aux_losses: dict = dataclasses.field(default_factory=dict)


class Molmo(nnx.Module):
    def __init__(self, config: MolmoConfig, *, rngs: nnx.Rngs):
        self.config = config
        pdt = as_dtype(config.param_dtype)
        self.vision = build_tower(config.vision, rngs=rngs, param_dtype=pdt)
        self.connector = Connector(config, rngs=rngs, param_dtype=pdt)
        self.llm = Decoder(config.llm, rngs=rngs, param_dtype=pdt)

    @property
    def dtype(self):
        return as_dtype(self.config.dtype)

    def encode_images(
        self, images: jax.Array, image_masks: jax.Array | None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """images `[B, C, P, patch_dim]` (padded crops all -1), image_masks `[B, C, P]` ->
        image features `[B, C, P', D]` and intermediates (vit_selected, pooled_features).

        Crops are independent, so they run in groups of `crop_chunk` (a loop keeps each group's
        activations in cache on CPU; `crop_chunk=0` runs all crops at once)."""
        b, c, p, pd = images.shape
        n = b * c
        crops = images.reshape(n, p, pd).astype(self.dtype)
        masks = None if image_masks is None else image_masks.reshape(n, p)
        chunk = self.crop_chunk
        if 0 < chunk < n:
            pad = (-n) % chunk
            groups = (
                jnp.pad(crops, ((0, pad), (0, 0), (0, 0)), constant_values=-1).reshape(-1, chunk, p, pd),
                None
                if masks is None
                else jnp.pad(masks, ((0, pad), (0, 0)), constant_values=-1).reshape(-1, chunk, p),
            )
            outs = jax.lax.map(jax.checkpoint(lambda g: self._encode_crops(*g)), groups)
            projected, selected, pooled = (o.reshape(-1, *o.shape[2:])[:n] for o in outs)
        else:
            projected, selected, pooled = self._encode_crops(crops, masks)
        inter = {
            "vit_selected": jnp.moveaxis(selected, 1, 0).reshape(
                selected.shape[1], b, c, *selected.shape[2:]
            ),
            "pooled_features": pooled.reshape(b, c, *pooled.shape[1:]),
        }
        return projected.reshape(b, c, *projected.shape[1:]), inter

    @property
    def crop_chunk(self) -> int:
        chunk = self.config.crop_chunk
        if chunk < 0:  # auto: small groups on CPU (cache locality), everything at once on accelerators
            return 2 if jax.default_backend() == "cpu" else 0
        return chunk

    def _encode_crops(self, crops: jax.Array, masks: jax.Array | None):
        """crops `[N, P, patch_dim]` -> (projected `[N, P', D]`, taps `[N, n_taps, tokens, W]`, pooled)."""
        layers = self.config.connector.vit_layers
        taps = self.vision(crops, layers, remat="vit" in self.config.remat)
        selected = [taps[layer] for layer in layers]
        n_prefix = self.vision.num_prefix_tokens
        features = jnp.concatenate([s[:, n_prefix:] for s in selected], axis=-1)
        valid_crop = jnp.any(crops != -1, axis=(1, 2))
        features = features * valid_crop[:, None, None].astype(features.dtype)
        pooled, projected = self.connector(features, masks, self.config.vision.grid)
        return projected, jnp.stack(selected, axis=1), pooled

    def embed_inputs(
        self,
        input_ids: jax.Array,
        images: jax.Array | None = None,
        image_masks: jax.Array | None = None,
        image_input_idx: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Token embeddings with image features added at `image_input_idx` (negatives skipped)."""
        x = self.llm.embed(input_ids, self.dtype)
        inter: dict[str, jax.Array] = {}
        if images is not None and images.shape[1] > 0:
            if image_input_idx is None:
                raise ValueError("images were given without image_input_idx")
            feats, inter = self.encode_images(images, image_masks)
            inter["image_features"] = feats
            b = feats.shape[0]
            flat = feats.reshape(b, -1, feats.shape[-1]).astype(x.dtype)
            idx = image_input_idx.reshape(b, -1)
            if idx.shape[1] != flat.shape[1]:
                raise ValueError(
                    f"image_input_idx has {idx.shape[1]} entries per row, "
                    f"the images give {flat.shape[1]} features"
                )
            use = idx >= 0
            flat = jnp.where(use[..., None], flat, 0)
            x = x.at[jnp.arange(b)[:, None], jnp.where(use, idx, 0)].add(flat)
        return x, inter

    def __call__(
        self,
        input_ids: jax.Array,
        images: jax.Array | None = None,
        image_masks: jax.Array | None = None,
        image_input_idx: jax.Array | None = None,
        *,
        position_ids: jax.Array | None = None,
        subsegment_ids: jax.Array | None = None,
        logit_positions: jax.Array | None = None,
        return_intermediates: bool = False,
        deterministic: bool = True,
        dropout_rng: jax.Array | None = None,
        response_mask: jax.Array | None = None,
    ) -> MolmoOutput:
        """Forward pass (no cache).

        Args:
          input_ids: `[B, T]` int, -1 = right padding.
          images: `[B, C, P, patch_dim]` float crops (padded crops all -1), or None (text only).
          image_masks: `[B, C, P]` fraction of real pixels per patch, or None.
          image_input_idx: `[B, C, P']` sequence position of each pooled feature (< 0 = unused).
          position_ids: `[B, T]`, default `clamp(cumsum(valid) - 1, 0)`.
          subsegment_ids: `[B, T]` for packed conversations (see `attention_bias`).
          logit_positions: `[B, K]` positions at which to compute logits (default: all T). Training
            needs logits only where the loss is, which in Molmo is a small part of the sequence.
          deterministic: False applies the config's residual dropout (needs `dropout_rng`, and
            `response_mask` `[B, T]` = loss_masks > 0 for response dropout); True never drops.
        """
        valid = input_ids != -1
        keep = None
        llm_cfg = self.config.llm
        if not deterministic and (llm_cfg.residual_dropout > 0 or llm_cfg.response_residual_dropout > 0):
            if dropout_rng is None:
                raise ValueError("deterministic=False with residual dropout needs a dropout_rng")
            keep = dropout_keep_prob(
                input_ids.shape, llm_cfg.residual_dropout, llm_cfg.response_residual_dropout, response_mask
            )
        positions = positions_from_valid(valid) if position_ids is None else position_ids
        x, inter = self.embed_inputs(input_ids, images, image_masks, image_input_idx)
        bias = attention_bias(valid, subsegment_ids)
        h, _, llm_inter = self.llm(
            x,
            positions,
            bias,
            collect=return_intermediates,
            remat="llm" in self.config.remat,
            keep=keep,
            dropout_rng=dropout_rng,
            valid=valid,
        )
        aux_losses = llm_inter.pop("moe_losses", {})
        if logit_positions is not None:
            h = jnp.take_along_axis(h, logit_positions[..., None], axis=1)
        logits = self.llm.logits(h)
        if not return_intermediates:
            return MolmoOutput(logits=logits, aux_losses=aux_losses)
        return MolmoOutput(
            logits=logits,
            hidden_states=llm_inter.pop("hidden_states"),
            vit_selected=inter.get("vit_selected"),
            pooled_features=inter.get("pooled_features"),
            image_features=inter.get("image_features"),
            extras=llm_inter,
            aux_losses=aux_losses,
        )

    def init_cache(self, batch: int, length: int, dtype=None) -> list[KVCache]:
        """Zeroed KV caches for `length` positions, one per decoder block."""
        llm = self.config.llm
        shape = (batch, length, llm.num_kv_heads, llm.head_dim)
        dtype = dtype or self.dtype
        return [KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(llm.num_layers)]


def count_params(tree) -> int:
    """Total number of parameter elements of a model, state or abstract state."""
    state = nnx.state(tree, nnx.Param) if isinstance(tree, nnx.Module) else tree
    return int(sum(x.size for x in jax.tree.leaves(state)))
