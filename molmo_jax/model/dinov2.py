"""DINOv2 ViT-L/14 as a Molmo vision tower (facebook/dinov2-large at 336 px).

Differences from CLIP: patch-embedding bias, no pre-LN, exact GELU, LayerNorm eps 1e-6, and
LayerScale on both residual branches (`x + gamma * f(norm(x))`). The 37x37 position embeddings of
the released model are resized to 24x24 when the checkpoint is imported
(`molmo_jax.checkpoints.backbones`), as the original converts them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from molmo_jax.model.config import VisionConfig
from molmo_jax.model.layers import ones_init, param, shard
from molmo_jax.model.vit import CLIPViT, ViTBlock, register_tower

DINOV2_LARGE_336 = VisionConfig(
    kind="dinov2",
    num_layers=24,
    activation="gelu",
    norm_eps=1e-6,
    use_pre_norm=False,
    patch_bias=True,
    resize_mode="dino",
    layer_scale=True,
)


class LayerScaleBlock(ViTBlock):
    def __init__(self, config: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        super().__init__(config, rngs=rngs, param_dtype=param_dtype)
        self.ls1 = param(rngs, ones_init, (config.width,), ("vit_embed",), param_dtype)
        self.ls2 = param(rngs, ones_init, (config.width,), ("vit_embed",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.ls1[...].astype(x.dtype) * self.attention(self.attention_norm(x))
        x = x + self.ls2[...].astype(x.dtype) * self.mlp(self.ffn_norm(x))
        return shard(x, ("batch", "length", "vit_embed"))


@register_tower("dinov2")
class DINOv2ViT(CLIPViT):
    block_cls = LayerScaleBlock

    def __init__(self, config: VisionConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        if not config.layer_scale:
            raise ValueError(
                "vision.kind='dinov2' needs vision.layer_scale=True (its blocks have LayerScale)"
            )
        super().__init__(config, rngs=rngs, param_dtype=param_dtype)
