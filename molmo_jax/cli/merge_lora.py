"""Fold LoRA adapters into a base checkpoint and export the released HF layout.

    python -m molmo_jax.cli.merge_lora --base DIR --adapters DIR --out DIR [--dtype float32]

The output (config.json + safetensors, the base's tokenizer / preprocessor files copied) loads in
`molmo_jax.load_pretrained` and in other Molmo runtimes like the base checkpoint.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("base", None, "base checkpoint folder (HF layout) or hub id")
flags.DEFINE_string("adapters", None, "adapter folder (adapter_model.safetensors + adapter_config.json)")
flags.DEFINE_string("out", None, "output checkpoint folder")
flags.DEFINE_string("dtype", "float32", "dtype the weights are merged and written in")

_SIDE_FILES = (
    "*.txt",
    "*.model",
    "tokenizer*",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "*.py",
)


def main(argv) -> int:
    if len(argv) != 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    for name in ("base", "adapters", "out"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    from molmo_jax.checkpoints.hf import resolve_checkpoint_dir, save_pretrained
    from molmo_jax.train.lora import count_params, load_with_adapters

    start = time.perf_counter()
    model, adapters, config = load_with_adapters(FLAGS.base, FLAGS.adapters, dtype=FLAGS.dtype)
    out = save_pretrained(model, FLAGS.out)
    base_dir = resolve_checkpoint_dir(FLAGS.base)
    copied = []
    for pattern in _SIDE_FILES:
        for f in sorted(Path(base_dir).glob(pattern)):
            if f.is_file() and f.name != "config.json" and not (out / f.name).exists():
                shutil.copy2(f, out / f.name)
                copied.append(f.name)
    print(
        f"merged {len(adapters)} adapters ({count_params(adapters):,} parameters, rank {config.rank}, "
        f"alpha {config.alpha}) into {out}; copied {', '.join(copied) or 'no side files'}; "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
