"""molmo-jax: Molmo vision-language models in JAX / Flax NNX.

Public API: `load_pretrained`, `save_pretrained`, `Molmo`, `MolmoConfig`, `MolmoProcessor`, `generate`.
Imports are lazy so that `import molmo_jax` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_pretrained": "molmo_jax.checkpoints.hf",
    "save_pretrained": "molmo_jax.checkpoints.hf",
    "Molmo": "molmo_jax.model.molmo",
    "MolmoOutput": "molmo_jax.model.molmo",
    "MolmoConfig": "molmo_jax.model.config",
    "get_preset": "molmo_jax.model.config",
    "MolmoProcessor": "molmo_jax.preprocess.processor",
    "generate": "molmo_jax.infer.generate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'molmo_jax' has no attribute {name!r}")
