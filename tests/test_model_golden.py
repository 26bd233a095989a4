"""Parity of the full model with the original implementation on every golden model case."""

from __future__ import annotations

import functools
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import golden_root, rel_err, require_golden

from molmo_jax.checkpoints.hf import load_pretrained

TOL = 1e-4  # golden README §2.5: err <= 1e-4 relative to max(1, max|ref|), fp32


def _model_cases() -> list[tuple[str, str]]:
    root = golden_root() / "models"
    if not root.exists():
        return [("<missing golden models folder>", "")]
    return [
        (folder.name, case.name)
        for folder in sorted(root.iterdir())
        if (folder / "config.json").exists()
        for case in sorted(folder.glob("case_*.npz"))
    ]


@functools.cache
def _model(name: str):
    return load_pretrained(require_golden("models", name))


def _inputs(case: dict) -> dict:
    kwargs = {}
    if "images_file" in case:
        images = np.load(require_golden("models", "shared_inputs", Path(str(case["images_file"])).name))
        kwargs = dict(
            images=jnp.asarray(images["images"]),
            image_masks=jnp.asarray(images["image_masks"]),
            image_input_idx=jnp.asarray(case["image_input_idx"]),
        )
    return kwargs


@pytest.mark.golden
@pytest.mark.parametrize("name,case_file", _model_cases())
def test_forward_matches_original(name: str, case_file: str):
    case = dict(np.load(require_golden("models", name, case_file)))
    model = _model(name)
    kwargs = _inputs(case)
    out = model(jnp.asarray(case["input_ids"]), **kwargs, return_intermediates=True)
    mask = case["attention_mask"].astype(bool)
    assert np.array_equal(np.asarray(out.logits.shape), case["logits"].shape)
    assert rel_err(np.asarray(out.logits)[mask], case["logits"][mask]) <= TOL
    assert rel_err(np.asarray(out.hidden_states)[:, mask], case["hidden_states"][:, mask]) <= TOL
    if kwargs:
        real_crop = ~np.all(np.asarray(kwargs["images"]) == -1, axis=(-1, -2))  # [B, C]
        assert real_crop.sum() < real_crop.size or case_file != "case_0.npz"  # case_0 has a padded crop
        assert (
            rel_err(np.asarray(out.vit_selected)[:, real_crop], case["vit_selected_hidden"][:, real_crop])
            <= TOL
        )
        assert rel_err(np.asarray(out.pooled_features)[real_crop], case["pooled_features"][real_crop]) <= TOL
        assert rel_err(np.asarray(out.image_features)[real_crop], case["image_features"][real_crop]) <= TOL
    else:
        assert out.image_features is None


@pytest.mark.golden
def test_golden_models_present():
    names = {n for n, _ in _model_cases()}
    assert {"qwen2_tiny", "olmo_tiny"} <= names, names


@pytest.mark.golden
@pytest.mark.parametrize("name", ["qwen2_tiny"])
def test_row_alone_equals_row_in_padded_batch(name: str):
    """Right padding must not leak into real positions (positions from the valid mask)."""
    case = dict(np.load(require_golden("models", name, "case_0.npz")))
    model = _model(name)
    kwargs = _inputs(case)
    full = np.asarray(model(jnp.asarray(case["input_ids"]), **kwargs).logits)
    n = int(case["attention_mask"][0].sum())
    crops = int((~np.all(np.asarray(kwargs["images"][0]) == -1, axis=(-1, -2))).sum())
    alone = model(
        jnp.asarray(case["input_ids"][:1, :n]),
        images=kwargs["images"][:1, :crops],
        image_masks=kwargs["image_masks"][:1, :crops],
        image_input_idx=kwargs["image_input_idx"][:1, :crops],
    ).logits
    assert rel_err(np.asarray(alone)[0], full[0, :n]) <= 2e-5
