"""One process of the two-process training test (run by tests/test_train_loop.py, not collected)."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"  # one CPU device per process

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--process_id", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{a.port}", num_processes=2, process_id=a.process_id)
    from test_train_loop import _tiny

    from molmo_jax.train.loop import train

    c = _tiny("stage1", a.data, a.tokenizer, a.steps)
    c.mesh.data = 2
    c.train.export_hf = False
    # Dropout masks follow an example's place in the global batch, which differs between one and two
    # processes (each feeds its own slice); the equivalence holds for the deterministic step.
    c.train.response_residual_dropout = 0.0
    summary = train(c, a.workdir)
    with open(a.out, "w") as f:
        json.dump([h["loss"] for h in summary["history"]], f)


if __name__ == "__main__":
    main()
