"""Parameter counts of the full-size presets, from shapes only (jax.eval_shape; no memory)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from flax import nnx

from molmo_jax.checkpoints.hf import abstract_model as _abstract_model
from molmo_jax.checkpoints.naming import molmo_rules
from molmo_jax.model.config import get_preset
from molmo_jax.model.molmo import count_params

# Totals of the released checkpoints. Molmo-7B-D: the `total_size` of its safetensors index / 4
# bytes (MOLMO_SPEC §4.3). The others follow from the per-tensor shapes of MOLMO_SPEC §4.3 with the
# §3.1 hyper-parameters (ViT and pooling identical in all four; projector hidden = LLM MLP hidden / 2):
#   molmo_7b_o: LLM 32 x (att_proj 12288x4096 + attn_out 4096^2 + ff_proj 22016x4096 + ff_out 4096x11008
#               + 4 norms x 4096) + 2 x 100352x4096 + 128x4096 + 4096 = 7,299,141,632; connector: pooling
#               7,344,128 + w1, w3 11008x1024 + w2 4096x11008 + pad 2x2048 = 74,981,376 (hub card: 7.67B).
#   molmo_72b:  LLM 80 x 877,684,736 per block + 2 x 152064x8192 + 128x8192 + 8192.
#   molmoe_1b:  LLM 16 x (att_proj 6144x2048 + attn_out 2048^2 + 4 norms + router 64x2048
#               + 3 x 64x1024x2048 experts) + 2 x 50304x2048 + 128x2048 + 2048 = 6,919,424,000
#               (28.9 GB in fp32, the size of the hub's pytorch_model.bin).
EXPECTED_TOTAL = {
    "molmo_7b_d": 8_021_025_280,
    "molmo_7b_o": 7_665_032_192,
    "molmo_72b": 73_308_285_952,
    "molmoe_1b": 7_221_875_712,
}
VIT_PARAMS = 290_909_184  # 23 CLIP-L blocks + patch / class / position embeddings + pre-LN


@functools.cache
def abstract_model(config):
    return _abstract_model(config)


# Tracing the 80-layer 72B model takes ~25 s: that case runs with the slow tests.
PRESET_CASES = [
    pytest.param(p, marks=pytest.mark.slow) if p == "molmo_72b" else p for p in sorted(EXPECTED_TOTAL)
]


@pytest.mark.parametrize("preset", PRESET_CASES)
def test_preset_parameter_count(preset: str):
    model = abstract_model(get_preset(preset))
    assert count_params(model) == EXPECTED_TOTAL[preset]
    assert count_params(nnx.state(model.vision, nnx.Param)) == VIT_PARAMS


@pytest.mark.parametrize(
    "preset",
    [  # the 72B table takes ~35 s on 2 cores
        pytest.param(p, marks=pytest.mark.slow) if p == "molmo_72b" else p for p in sorted(EXPECTED_TOTAL)
    ],
)
def test_checkpoint_table_covers_every_parameter(preset: str):
    """The released-checkpoint naming table describes exactly as many values as the model has."""
    config = get_preset(preset)
    rules = molmo_rules(config)
    table = sum(int(np.prod(s)) for r in rules for s in r.hf_shapes)
    ours = {p for r in rules for p in r.ours}
    assert table == EXPECTED_TOTAL[preset]
    flat = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(abstract_model(config), nnx.Param))}
    assert ours == flat


def test_molmo_7b_d_breakdown():
    model = abstract_model(get_preset("molmo_7b_d"))
    llm = count_params(nnx.state(model.llm, nnx.Param))
    connector = count_params(nnx.state(model.connector, nnx.Param))
    assert (llm, connector) == (7_616_075_264, 114_040_832)


def test_bench_config_size():
    """shared/bench/README.md: the small benchmark configuration has 63.9 M parameters."""
    assert round(count_params(abstract_model(get_preset("bench"))) / 1e6, 1) == 63.9
