"""Evaluate a checkpoint on a prepared evaluation set.

    python -m molmo_jax.cli.evaluate --config=configs/eval.py:pixmo_count --workdir=runs/eval \
        --config.checkpoint=DIR --config.data_dir=DIR [--overwrite] [--blank_images] [--noprogress]

Writes ``WORKDIR/<task>/{predictions.jsonl, metrics.json, run.json, report.html}`` and
``WORKDIR/metrics.json``; a re-run resumes (ids already in predictions.jsonl are skipped) unless
``--overwrite``. ``--blank_images`` replaces every image by a black one of the same size (control).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "eval config file[:preset]", lock_config=True)
flags.DEFINE_string("workdir", None, "output folder (one sub-folder per task)", required=True)
flags.DEFINE_bool("overwrite", False, "redo examples already in predictions.jsonl")
flags.DEFINE_bool("blank_images", False, "replace every image by a black image of the same size")
flags.DEFINE_bool("progress", True, "show a progress bar")
flags.DEFINE_string("checkpoint", None, "checkpoint folder (same as --config.checkpoint)")


def main(argv) -> int:
    del argv
    from molmo_jax.eval.evaluate import evaluate

    if FLAGS.checkpoint:
        FLAGS.config.checkpoint = FLAGS.checkpoint
    results = evaluate(
        FLAGS.config,
        FLAGS.workdir,
        overwrite=FLAGS.overwrite,
        blank_images=FLAGS.blank_images,
        progress=FLAGS.progress,
    )
    for task, r in results.items():
        values = "  ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items())
        print(f"{task} ({r['metric']}, {r['num_examples']} examples): {values}")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
