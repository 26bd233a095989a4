"""`benchmarks/demo_attention_probe.py` recomputes each attention call's probabilities: they must be
the ones the layer uses, and recording must not change the forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.demo_attention_probe import AttentionRecorder
from molmo_jax.model import llm
from molmo_jax.model.config import get_preset


def test_recorded_probabilities_are_the_layers():
    cfg = get_preset("tiny").llm
    attn = llm.Attention(cfg, rngs=nnx.Rngs(0))
    b, t = 2, 7
    x = jax.random.normal(jax.random.key(1), (b, t, cfg.d_model))
    valid = jnp.array([[1] * t, [1] * 5 + [0] * 2], bool)
    sin, cos = llm.rope_angles(llm.positions_from_valid(valid), cfg.head_dim, cfg.rope_theta)
    bias = llm.attention_bias(valid)
    plain, _ = attn(x, sin, cos, bias)
    with AttentionRecorder() as rec:
        recorded, _ = attn(x, sin, cos, bias)
    assert attn.__class__.__call__ is rec._call  # unwrapped again on exit
    np.testing.assert_array_equal(np.asarray(recorded), np.asarray(plain))
    (probs,) = rec.probs
    assert probs.shape == (b, cfg.num_heads, t, t)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(probs, 1) < 1e-6)  # causal
    assert np.all(probs[1, :, :, 5:] < 1e-6)  # padding keys of the second row
    # The layer's output rebuilt from the recorded probabilities and its own value / output weights.
    v = jnp.einsum("BTD,DKH->BTKH", x, attn.v[...])
    if attn.v_bias is not None:
        v = v + attn.v_bias[...]
    v = jnp.repeat(v, cfg.num_heads // cfg.num_kv_heads, axis=2)
    out = jnp.einsum("BNTS,BSNH,NHD->BTD", probs, v, attn.o[...])
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=2e-4, atol=2e-5)


def test_target_cells_are_the_global_views_grid_cells_under_the_points():
    from benchmarks.demo_attention_probe import target_cells

    idx = np.full((2, 3, 4), -100, np.int32)  # 2 examples, 3 crops, a 2x2 grid per crop
    idx[:, 0] = [[5, 6, 8, 9], [2, 3, 5, 6]]  # global view tokens (row-major) at these positions
    batch = {"input_ids": np.zeros((2, 12), np.int64), "image_input_idx": idx}
    points = [np.array([[0.9, 0.1], [0.2, 0.7]]), None]  # (x, y): top right, bottom left
    cells = target_cells(batch, points)
    assert np.flatnonzero(cells[0]).tolist() == [6, 8]
    assert not cells[1].any()
