"""Random initialisation of the towers: the released models' N(0, 0.02) ("normal", the default) and
the width-scaled "fan_in" for training from scratch, chosen per tower or by the trainer's
`model.weight_init`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_config

from molmo_jax.model.config import ConfigError, LLMConfig, VisionConfig, get_preset
from molmo_jax.model.layers import kernel_init
from molmo_jax.model.llm import attention_bias, positions_from_valid, rope_angles
from molmo_jax.model.molmo import Molmo
from molmo_jax.train.config import validate
from molmo_jax.train.loop import with_weight_init


def _std(x) -> float:
    return float(np.asarray(x[...]).std())


def _close(actual: float, expected: float, rel: float = 0.08) -> bool:
    return abs(actual - expected) <= rel * expected


def test_kernel_init_scales():
    def std(init) -> float:
        return float(init(jax.random.key(0), (256, 512), jnp.float32).std())

    assert _close(std(kernel_init("normal", 4096)), 0.02)
    assert _close(std(kernel_init("fan_in", 256)), 256**-0.5)
    # the last projection of a residual branch in a 6-block stack: / sqrt(2 * 6)
    assert _close(std(kernel_init("fan_in", 256, 6)), (256 * 12) ** -0.5)
    assert _close(std(kernel_init("normal", 256, 6)), 0.02)  # depth only scales the width-scaled init
    with pytest.raises(ValueError, match="'xavier'"):
        kernel_init("xavier", 256)


def _model(init: str) -> Molmo:
    cfg = with_weight_init(get_preset("tiny"), init)
    return Molmo(cfg, rngs=nnx.Rngs(0))


def test_default_init_is_the_originals():
    cfg = get_preset("tiny")
    assert (cfg.vision.init, cfg.llm.init) == ("normal", "normal")
    model = Molmo(cfg, rngs=nnx.Rngs(0))
    block = model.llm.blocks[0]
    for p in (block.attn.q, block.attn.o, block.mlp.down, model.llm.embedding, model.llm.lm_head):
        assert _close(_std(p), 0.02)
    vit = model.vision
    for p in (vit.blocks[0].attention.wq.kernel, vit.blocks[0].mlp.w2.kernel, vit.positional_embedding):
        assert _close(_std(p), 0.02)


def test_fan_in_init_follows_the_widths():
    model = _model("fan_in")
    llm, vis = model.config.llm, model.config.vision
    d, layers = llm.d_model, llm.num_layers
    block = model.llm.blocks[0]
    assert _close(_std(block.attn.q), d**-0.5)
    assert _close(_std(block.attn.k), d**-0.5)
    assert _close(_std(block.attn.o), (llm.num_heads * llm.head_dim * 2 * layers) ** -0.5)
    assert _close(_std(block.mlp.gate), d**-0.5)
    assert _close(_std(block.mlp.down), (llm.mlp_hidden * 2 * layers) ** -0.5)
    assert _close(_std(model.llm.embedding), 1.0)
    assert _close(_std(model.llm.lm_head), d**-0.5)
    vit = model.vision
    assert _close(_std(vit.patch_embedding.kernel), vis.patch_dim**-0.5)
    assert _close(_std(vit.blocks[0].attention.wq.kernel), vis.width**-0.5)
    wo_fan = vis.num_heads * vis.head_dim * 2 * vis.num_layers
    assert _close(_std(vit.blocks[0].attention.wo.kernel), wo_fan**-0.5)
    assert _close(_std(vit.blocks[0].mlp.w2.kernel), (vis.mlp_dim * 2 * vis.num_layers) ** -0.5)
    assert _close(_std(vit.positional_embedding), vis.width**-0.5)
    assert model.config.connector.init == "fan_in"
    # norms and biases keep their constant init
    assert float(np.asarray(block.attn_norm.scale[...]).min()) == 1.0


def test_fan_in_keeps_the_residual_stream_at_unit_scale():
    """With N(0, 0.02) a narrow decoder's blocks barely change a unit-scale input; with the
    width-scaled init a block's update is of the same order as its input."""
    ids = (jnp.arange(24, dtype=jnp.int32) * 7).reshape(2, 12) % 200
    valid = ids >= 0
    updates = {}
    for init in ("normal", "fan_in"):
        model = _model(init)
        llm = model.config.llm
        x = model.llm.embed(ids, jnp.float32)
        x = x / jnp.sqrt(jnp.mean(x * x))  # the same unit-scale input for both inits
        sin, cos = rope_angles(positions_from_valid(valid), llm.head_dim, llm.rope_theta)
        y = model.llm.blocks[0](x, sin, cos, attention_bias(valid))[0]
        updates[init] = float(jnp.sqrt(jnp.mean((y - x) ** 2)))
    assert updates["normal"] < 0.1
    assert 0.2 < updates["fan_in"] < 3.0


def test_bad_inits_are_named():
    with pytest.raises(ConfigError, match="vision.init"):
        VisionConfig(init="xavier")
    with pytest.raises(ConfigError, match="llm.init"):
        LLMConfig(init="xavier")


def test_trainer_weight_init_is_validated_and_applied():
    c = load_config("stage1_caption", "tiny")
    assert c.model.init == "scratch" and c.model.weight_init == ""
    validate(c)
    c.model.weight_init = "xavier"
    with pytest.raises(ConfigError, match=r"config\.model\.weight_init='xavier'"):
        validate(c)
    c.model.weight_init = "fan_in"
    validate(c)
    c.model.init, c.model.checkpoint = "checkpoint", "some/checkpoint"
    with pytest.raises(ConfigError, match="needs model.init='scratch'"):
        validate(c)
    cfg = with_weight_init(get_preset("demo"), "normal")
    assert (cfg.vision.init, cfg.connector.init, cfg.llm.init) == ("normal",) * 3
    assert with_weight_init(get_preset("demo"), "") == get_preset("demo")
