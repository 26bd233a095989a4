"""The connector's initialisation: the original's N(0, 0.02), and the scale-keeping `fan_in` that a
narrow model trained from scratch (the `demo` preset) needs for its pixels to reach the LLM."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from molmo_jax.model.config import ConfigError, ConnectorConfig, get_preset
from molmo_jax.model.molmo import Molmo


def _features(init: str) -> tuple[Molmo, np.ndarray]:
    cfg = get_preset("demo")
    cfg = dataclasses.replace(cfg, connector=dataclasses.replace(cfg.connector, init=init), dtype="float32")
    model = Molmo(cfg, rngs=nnx.Rngs(0))
    v = cfg.vision
    patches = v.image_size[0] // v.patch_size * v.image_size[1] // v.patch_size
    images = jax.random.uniform(jax.random.key(1), (2, 3, patches, v.patch_size**2 * 3), minval=-1, maxval=1)
    features, _ = model.encode_images(images, jnp.ones((2, 3, patches)))
    return model, np.asarray(features)


def test_normal_init_is_the_originals():
    model, features = _features("normal")
    w1 = np.asarray(model.connector.image_projector.w1.kernel[...])
    assert abs(w1.std() - 0.02) < 0.002
    # At the demo's widths this init hands the LLM image features far below its token embeddings
    # (N(0, 0.02)): the reason the demo preset does not use it.
    assert features.std() < 1e-3


def test_fan_in_init_keeps_feature_scale():
    model, features = _features("fan_in")
    w1 = np.asarray(model.connector.image_projector.w1.kernel[...])
    assert abs(w1.std() - 1 / np.sqrt(w1.shape[0])) < 0.1 / np.sqrt(w1.shape[0])
    assert features.std() > 0.05  # comparable to (larger than) the token embeddings
    assert np.abs(features[0] - features[1]).mean() > 0.01  # and they differ between images


def test_demo_preset_uses_fan_in_and_bad_init_is_named():
    assert get_preset("demo").connector.init == "fan_in"
    assert get_preset("molmo_7b_d").connector.init == "normal"
    with pytest.raises(ConfigError, match="connector.init"):
        ConnectorConfig(init="xavier")
