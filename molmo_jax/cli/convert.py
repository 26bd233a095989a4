"""Checkpoint conversion.

Stage-1 initialisation from pretrained backbones (HF layouts, no torch):

    python -m molmo_jax.cli.convert backbone --vision DIR --llm DIR --preset molmo_7b_d --out DIR

writes an HF-layout Molmo checkpoint (config.json + safetensors + the LLM's tokenizer files) with
the tower and LLM imported and the connector freshly initialised, which stage-1 training loads.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("vision", None, "HF vision tower folder (CLIPVisionModel, SigLIP, DINOv2, MetaCLIP)")
flags.DEFINE_string("llm", None, "HF causal LM folder (Qwen2, OLMo-2, OLMoE)")
flags.DEFINE_string("preset", "molmo_7b_d", "Molmo preset giving the connector settings")
flags.DEFINE_string("out", None, "output checkpoint folder")
flags.DEFINE_integer(
    "vision_layers", None, "blocks of the tower to keep (default: the preset's, 23 for CLIP-L)"
)
flags.DEFINE_integer("seed", 0, "seed of the fresh connector / new-embedding initialisation")


def main(argv) -> int:
    if len(argv) != 2 or argv[1] != "backbone":
        raise app.UsageError(
            "usage: python -m molmo_jax.cli.convert backbone --vision DIR --llm DIR --out DIR"
        )
    for name in ("vision", "llm", "out"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    from molmo_jax.checkpoints.backbones import copy_tokenizer_files, init_stage1
    from molmo_jax.checkpoints.hf import save_pretrained
    from molmo_jax.model.config import get_preset
    from molmo_jax.model.molmo import count_params

    start = time.perf_counter()
    model = init_stage1(
        FLAGS.vision, FLAGS.llm, get_preset(FLAGS.preset), seed=FLAGS.seed, vision_layers=FLAGS.vision_layers
    )
    out = save_pretrained(model, FLAGS.out)
    copied = copy_tokenizer_files(FLAGS.llm, out)
    cfg = model.config
    print(f"stage-1 checkpoint: {out}")
    print(
        f"  vision {cfg.vision.kind}: {cfg.vision.num_layers} blocks, width {cfg.vision.width}; "
        f"taps {list(cfg.connector.vit_layers)}"
    )
    print(
        f"  llm {cfg.llm.family}: {cfg.llm.num_layers} layers, d_model {cfg.llm.d_model}, "
        f"vocab {cfg.llm.vocab_size}"
    )
    print(
        f"  {count_params(model):,} parameters; tokenizer files: {', '.join(copied) or 'none'}; "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
