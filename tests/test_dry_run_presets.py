"""AOT memory dry run of the released presets on the 8 simulated devices (benchmarks/dry_run_presets).

Compiling a 7B graph on a 2-core CPU takes minutes (the 72B one far longer: the decoder blocks are
a Python loop, so XLA compiles every layer), so by default only MolmoE-1B runs; set
MOLMO_DRY_RUN_ALL=1 to run every preset.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.dry_run_presets import dry_run, format_row

# Parameter counts of the presets (the released checkpoints' sizes).
PARAMETERS = {
    "molmoe_1b": 7_221_875_712,
    "molmo_7b_o": 7_665_032_192,
    "molmo_7b_d": 8_021_025_280,
    "molmo_72b": 73_308_285_952,
}
_all = pytest.mark.skipif(not os.environ.get("MOLMO_DRY_RUN_ALL"), reason="set MOLMO_DRY_RUN_ALL=1 (long)")


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset",
    [
        "molmoe_1b",
        pytest.param("molmo_7b_d", marks=_all),
        pytest.param("molmo_7b_o", marks=_all),
        pytest.param("molmo_72b", marks=_all),
    ],
)
def test_preset_dry_run_reports_positive_sizes(preset):
    r = dry_run("stage2", preset, {"data": 1, "fsdp": 8, "tensor": 1, "expert": 1}, 32, "dense")
    print(format_row(r))
    assert r["parameters"] == PARAMETERS[preset]
    assert r["devices"] == 8 and r["mesh"]["fsdp"] == 8
    for key in ("argument_bytes", "output_bytes", "temp_bytes", "peak_bytes_per_device"):
        assert r[key] > 0, key
    # fp32 parameters and two Adam moments, 8-way sharded, dominate the arguments
    assert 12 * r["parameters"] / 8 * 0.9 < r["argument_bytes"] < 12 * r["parameters"] / 8 * 1.2
