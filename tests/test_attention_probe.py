"""`benchmarks/demo_attention_probe.py`: the attention probabilities it recomputes must be the ones
the layer uses (and recording must not change the forward pass), and an object mask must mark the
image tokens of every crop that see the object."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from helpers import train_bpe_tokenizer

from benchmarks.demo_attention_probe import AttentionRecorder, target_tokens
from molmo_jax.model import llm
from molmo_jax.model.config import get_preset
from molmo_jax.preprocess import MolmoProcessor, MolmoTokenizer
from molmo_jax.preprocess.image import ImagePreprocessConfig


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


def test_target_tokens_follow_the_mask_through_every_crop(tmp_path):
    tokenizer = MolmoTokenizer.from_pretrained(train_bpe_tokenizer(tmp_path))
    image = ImagePreprocessConfig(crop_size=140, overlap_margins=(2, 2), max_crops=4)  # the demo's
    proc = MolmoProcessor(tokenizer, image)
    out = proc(images=np.zeros((224, 224, 3), np.uint8), text="?")
    batch = {"input_ids": out["input_ids"][None], "image_input_idx": out["image_input_idx"][None]}
    idx = out["image_input_idx"]  # [5 crops, 25]: the global view, then 2x2 tiles, 5x5 tokens each
    corner = np.zeros((224, 224), bool)
    corner[:20, :20] = True  # inside the top-left global cell and the first tile's first token
    far = np.zeros((224, 224), bool)
    far[-20:, -20:] = True
    marked = target_tokens(batch, [corner], proc)[0]
    assert set(np.flatnonzero(marked)) == {idx[0, 0], idx[1, 0]}
    marked = target_tokens(batch, [far], proc)[0]
    assert set(np.flatnonzero(marked)) == {idx[0, 24], idx[4, 24]}
    top_right = np.zeros((224, 224), bool)
    top_right[:20, -20:] = True  # the global row 0, column 4; the second (top-right) tile
    marked = target_tokens(batch, [top_right], proc)[0]
    assert set(np.flatnonzero(marked)) == {idx[0, 4], idx[2, 4]}
    assert not target_tokens(batch, [None], proc).any()
