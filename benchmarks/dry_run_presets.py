"""AOT memory dry run of the train step for every released preset and both stages, on a simulated
8-device CPU mesh; prints one table row per run.

    python -m benchmarks.dry_run_presets [--presets molmoe_1b,molmo_7b_d] [--stages stage1,stage2]
        [--mesh fsdp=8] [--batch_size 32]

Nothing is allocated: the step is compiled on abstract inputs and XLA reports per-device sizes of the
arguments (parameters, optimizer state, batch), outputs and temporaries. The default batch is the
recipe's micro-batch of 4 per device. MoE presets compile with `moe_impl=dense` by default: the CPU
lowering of `ragged_dot` materialises a dense [groups, rows, d] operand, so its temporaries say
nothing about an accelerator (pass --moe_impl ragged to see them).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

REPO = Path(__file__).resolve().parent.parent
PRESETS = ("molmoe_1b", "molmo_7b_o", "molmo_7b_d", "molmo_72b")
STAGE_CONFIGS = {"stage1": "stage1_caption", "stage2": "stage2_multitask"}


def load_stage_config(stage: str, preset: str):
    """`configs/<stage config>.py:get_config(preset)`, as `--config=...:preset` loads it."""
    import importlib.util

    name = STAGE_CONFIGS[stage]
    spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def parse_mesh(text: str) -> dict[str, int]:
    out = {"data": 1, "fsdp": 1, "tensor": 1, "expert": 1}
    for part in filter(None, text.split(",")):
        key, value = part.split("=")
        if key not in out:
            raise SystemExit(f"--mesh: unknown axis {key!r}; the axes are {sorted(out)}")
        out[key] = int(value)
    return out


def dry_run(stage: str, preset: str, mesh: dict[str, int], batch_size: int, moe_impl: str) -> dict:
    """One dry run; returns the report of `loop.dry_run_memory` plus stage and mesh text."""
    from molmo_jax.model.config import get_preset
    from molmo_jax.train.loop import dry_run_memory

    c = load_stage_config(stage, preset)
    c.model.checkpoint = "unused"  # the dry run builds the preset's shapes; nothing is read
    c.data.batch_size = batch_size
    for axis, size in mesh.items():
        c.mesh[axis] = size
    overrides = {"moe_impl": moe_impl} if get_preset(preset).llm.is_moe else None
    report = dry_run_memory(c, llm_overrides=overrides)
    report["stage"] = stage
    return report


def format_row(r: dict) -> str:
    gib = lambda n: f"{n / 2**30:9.2f}"  # noqa: E731
    mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items() if v > 1) or "1"
    return (
        f"{r['preset']:<11} {r['stage']:<7} {mesh:<16} {r['parameters'] / 1e9:7.2f}B "
        f"{gib(r['argument_bytes'])} {gib(r['output_bytes'])} {gib(r['temp_bytes'])} "
        f"{gib(r['peak_bytes_per_device'])} {r['compile_s']:9.1f}"
    )


HEADER = (
    f"{'preset':<11} {'stage':<7} {'mesh':<16} {'params':>8} {'arg GiB':>9} {'out GiB':>9} "
    f"{'temp GiB':>9} {'total GiB':>9} {'compile s':>9}"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--stages", default="stage1,stage2")
    ap.add_argument("--mesh", default="fsdp=8", help="axis=size,... over the 8 simulated devices")
    ap.add_argument("--batch_size", type=int, default=32, help="global batch (default 4 per device)")
    ap.add_argument("--moe_impl", default="dense", choices=("dense", "ragged"))
    args = ap.parse_args(argv)
    mesh = parse_mesh(args.mesh)
    print("per-device sizes; total = arguments + outputs + temporaries - aliased (donated)", flush=True)
    print(HEADER, flush=True)
    for preset in filter(None, args.presets.split(",")):
        for stage in filter(None, args.stages.split(",")):
            print(format_row(dry_run(stage, preset, mesh, args.batch_size, args.moe_impl)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
