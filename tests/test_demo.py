"""The demo job: phase bookkeeping, the report's verdicts, and (slow) the whole job at smoke size."""

from __future__ import annotations

import json

import ml_collections
import pytest
from helpers import load_config

from molmo_jax.demo import report
from molmo_jax.demo.run import DemoError, Phases
from molmo_jax.eval.metrics import clock_minutes_off


def _targets() -> ml_collections.ConfigDict:
    return load_config("demo", "default").targets


def _evals(trained: tuple[float, float, float], blank: tuple[float, float, float]) -> dict:
    def one(values):
        count, f1, clock = values
        return {
            "pixmo_count_counting": {"correct": count},
            "pixmo_points_eval": {"f1": f1},
            "pixmo_clocks": {"within_2_minutes": clock},
        }

    return {"trained": one(trained), "blank": one(blank)}


def test_summary_needs_target_and_margin_over_blank():
    rows = report.summarize(_evals((0.85, 0.72, 0.50), (0.60, 0.05, 0.0)), _targets())
    assert rows["counting"]["meets_target"] and not rows["counting"]["beats_blank"]  # +0.25 < 0.30
    assert rows["pointing"]["meets_target"] and rows["pointing"]["beats_blank"]
    assert not rows["clocks"]["meets_target"] and rows["clocks"]["beats_blank"]
    assert rows["pointing"]["margin"] == pytest.approx(0.67)
    text = report.table({"scores": rows}, _targets())
    lines = text.splitlines()
    assert lines[0].split() == ["score", "target", "trained", "blank", "margin", "result"]
    assert "MISS (margin < 0.30)" in lines[2] and lines[3].endswith("PASS")
    assert "MISS (below target)" in lines[4] and "0.500" in lines[4] and len(lines) == 5
    losses = {"pixmo_points": {"trained": 0.9, "blank": 1.2, "tokens": 10}}
    lines = report.table({"scores": rows, "heldout_loss": losses}, _targets()).splitlines()
    assert lines[6].startswith("held-out answer loss") and lines[7].split() == [
        "pixmo_points",
        "0.900",
        "1.200",
        "-0.300",
    ]


def test_phases_run_once_and_refuse_changed_settings(tmp_path):
    calls = []
    log = []
    phases = Phases(tmp_path, log.append)
    out = phases.run("a", {"x": 1}, lambda folder: calls.append(folder) or {"value": 7})
    assert out == {"value": 7} and calls == [tmp_path / "a"]
    again = Phases(tmp_path, log.append).run("a", {"x": 1}, lambda folder: calls.append(folder))
    assert again == {"value": 7} and len(calls) == 1 and "reused" in log[-1]
    with pytest.raises(DemoError, match="phase 'a'.*--fresh"):
        Phases(tmp_path, log.append).run("a", {"x": 2}, lambda folder: None)
    # config sections nested in the settings are compared by value
    nested = {"stage": ml_collections.ConfigDict({"train": {"steps": 5}, "margins": (2, 2)})}
    Phases(tmp_path, log.append).run("c", nested, lambda folder: {})
    Phases(tmp_path, log.append).run("c", nested, lambda folder: {})
    nested["stage"].train.steps = 6
    with pytest.raises(DemoError, match="phase 'c'"):
        Phases(tmp_path, log.append).run("c", nested, lambda folder: None)


def test_a_failed_phase_is_not_marked_done(tmp_path):
    def boom(folder):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        Phases(tmp_path, print).run("b", {}, boom)
    assert not (tmp_path / "b" / "phase.json").exists()
    assert Phases(tmp_path, print).run("b", {}, lambda f: {"ok": True}) == {"ok": True}


@pytest.mark.parametrize(
    "prediction,truth,expected",
    [
        ("The time shown is 5:07:30", (5, 7, 30), 0.0),
        ("The time shown is 5:09", (5, 7, 30), 2.0),  # no predicted seconds: minutes only
        ("The time shown is 12:01:00", (11, 59, 0), 2.0),  # across 12 o'clock
        ("The time shown is 6:07", (5, 7, -1), 60.0),
        ("The time shown is 11:00", (5, 0, -1), 360.0),
        ("no time here", (5, 7, 30), None),
    ],
)
def test_clock_minutes_off(prediction, truth, expected):
    off = clock_minutes_off(prediction, *truth)
    assert off == (None if expected is None else pytest.approx(expected))


@pytest.mark.slow
def test_quick_demo_runs_every_phase_and_reuses_them(tmp_path):
    from molmo_jax.demo.run import PHASES, run_demo

    c = load_config("demo", "quick")
    out = tmp_path / "demo_out"
    log: list[str] = []
    summary = run_demo(c, out, log=log.append)
    for phase in PHASES:
        assert (out / phase / "phase.json").exists(), phase
    for name in ("metrics.json", "loss_curves.png", "index.html"):
        assert (out / "report" / name).stat().st_size > 0
    assert set(summary["scores"]) == {"counting", "pointing", "clocks"}
    for row in summary["scores"].values():
        assert 0.0 <= row["trained"] <= 1.0 and 0.0 <= row["blank"] <= 1.0
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["scores"] == summary["scores"]
    assert set(metrics["heldout_loss"]) == set(c.stage2.data.tasks)
    for row in metrics["heldout_loss"].values():
        assert row["trained"] > 0 and row["blank"] > 0 and row["tokens"] > 0
    example = json.loads((out / "example" / "example.json").read_text())
    assert example["prompt"].startswith("Point to the") and (out / "example" / "example.png").exists()
    assert any(line.startswith("score") for line in log) and any("phase times" in line for line in log)
    assert (out / "stage2" / "run" / "hf" / "preprocessor_config.json").exists()

    log.clear()
    assert run_demo(c, out, log=log.append)["scores"] == summary["scores"]
    assert sum("reused" in line for line in log) == len(PHASES)

    c.stage2.train.steps += 1
    with pytest.raises(DemoError, match="stage2"):
        run_demo(c, out, log=log.append)
