"""Helpers shared by tests (not collected): small tokenizers and the experiment configs."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEXTS = [
    "User: What animal is this? Assistant: A cat sitting on a mat.",
    "Point to the cat.",
    "Describe this image in detail.",
] * 20


def train_bpe_tokenizer(
    folder: str | Path, texts: Sequence[str] = DEFAULT_TEXTS, vocab_size: int = 300
) -> Path:
    """A byte-level BPE small enough for the tiny models' vocabularies, saved with its EOS in `folder`."""
    from molmo_jax.preprocess.tokenizer import train_bpe_tokenizer as train

    return train(list(texts), folder, vocab_size)


def load_config(name: str, arg: str):
    """`configs/<name>.py:get_config(arg)`, as `--config=configs/<name>.py:<arg>` loads it."""
    spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO_ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def golden_tiny_checkpoint(dst: Path) -> Path:
    """The golden qwen2_tiny weights with a small tokenizer that fits its 512-row vocabulary: a
    checkpoint folder the CLI, the processor and the server load like a released one."""
    import shutil

    from conftest import require_golden

    src = require_golden("models", "qwen2_tiny")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, Path(dst) / name)
    return train_bpe_tokenizer(dst, vocab_size=300)
