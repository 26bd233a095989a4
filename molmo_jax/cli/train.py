"""Train Molmo from an ml_collections config.

    python -m molmo_jax.cli.train --config=configs/stage1_caption.py:tiny --workdir=runs/tiny \
        [--config.train.steps=100] [--config.data.data_dir=...]

Resumes from the latest checkpoint in --workdir. On a multi-host TPU / GPU cluster every host runs
the same command (see launch/); `jax.distributed.initialize()` is called when --distributed is set.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file[:preset]", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (checkpoints, TensorBoard, exports)", required=True)
flags.DEFINE_integer("stop_after", None, "stop after this many steps of this run (resume later)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-host)")
flags.DEFINE_bool(
    "dry_run_memory",
    False,
    "AOT-compile the train step on abstract inputs and print the "
    "per-device memory for the config's mesh (simulate devices with "
    "XLA_FLAGS=--xla_force_host_platform_device_count=N); nothing is allocated",
)


def main(argv) -> int:
    del argv
    import jax

    if FLAGS.distributed:
        jax.distributed.initialize()
    from molmo_jax.train.loop import dry_run_memory, train

    if FLAGS.dry_run_memory:
        r = dry_run_memory(FLAGS.config)
        gib = lambda n: f"{n / 2**30:.2f} GiB"
        print(
            f"{r['preset']}: {r['parameters']:,} parameters ({r['trainable']:,} trainable) on mesh "
            f"{r['mesh']} ({r['devices']} devices)"
        )
        print(
            f"  per device: arguments {gib(r['argument_bytes'])}, outputs {gib(r['output_bytes'])}, "
            f"temporaries {gib(r['temp_bytes'])}, aliased {gib(r['alias_bytes'])}"
        )
        print(f"  peak per device ~ {gib(r['peak_bytes_per_device'])} (compiled in {r['compile_s']:.0f} s)")
        return 0

    summary = train(FLAGS.config, FLAGS.workdir, stop_after=FLAGS.stop_after)
    last = summary["history"][-1] if summary["history"] else {}
    loss = last.get("loss", float("nan"))
    print(f"done: steps {summary['start_step']}..{summary['end_step']}, last loss {loss:.4f}")
    if "adapters" in summary:
        print(f"LoRA adapters {summary['adapters']}")
    if "hf_checkpoint" in summary:
        print(f"exported {summary['hf_checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
