"""The demo job: synthetic data -> stage 1 -> stage 2 -> evaluation with a blank-image control ->
report, on one CPU in about 15 minutes (`make demo`).

    python -m molmo_jax.cli.demo [--config=configs/demo.py] [--out=demo_out] [--fresh]
        [--config.stage2.train.steps=800]

Finished phases are reused on a re-run; --fresh starts over. The report is OUT/report/index.html.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_DEFAULT = Path(__file__).resolve().parents[2] / "configs" / "demo.py"
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", str(_DEFAULT), "demo config file[:preset]", lock_config=True)
flags.DEFINE_string("out", "demo_out", "output folder (data, runs, evaluations, report)")
flags.DEFINE_bool("fresh", False, "delete OUT first and redo every phase")


def main(argv) -> int:
    del argv
    # The demo's own progress lines say what happens; library chatter would drown them.
    logging.getLogger("absl").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    from molmo_jax.demo.run import run_demo

    run_demo(FLAGS.config, FLAGS.out, fresh=FLAGS.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
