"""Molmo preprocessing: images -> crops and image tokens, text -> prompts and token ids.

Public API: :class:`MolmoProcessor` (everything together), :class:`MolmoTokenizer`,
:class:`ImagePreprocessConfig`, :class:`FormatterConfig`, :func:`load_image`, :func:`collate`.
Submodules: ``image`` (loading, tiling, crops), ``resize`` (PyTorch-exact resampling), ``tokenizer``,
``formatting`` + ``prompts`` (chat template, style prefixes, templates, loss masks), ``processor``,
``pointing`` (point markup). Imports are lazy so ``molmo_jax.preprocess.pointing`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MolmoProcessor": "molmo_jax.preprocess.processor",
    "SequenceTooLongError": "molmo_jax.preprocess.processor",
    "collate": "molmo_jax.preprocess.processor",
    "MolmoTokenizer": "molmo_jax.preprocess.tokenizer",
    "TokenizerError": "molmo_jax.preprocess.tokenizer",
    "ImagePreprocessConfig": "molmo_jax.preprocess.image",
    "ImageError": "molmo_jax.preprocess.image",
    "load_image": "molmo_jax.preprocess.image",
    "FormatterConfig": "molmo_jax.preprocess.formatting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'molmo_jax.preprocess' has no attribute {name!r}")
