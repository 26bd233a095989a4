"""The trainer end to end on synthetic PixMo-shaped data: stage 1 then stage 2, exact resume, config
errors."""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from helpers import load_config, train_bpe_tokenizer

from molmo_jax.model.config import ConfigError
from molmo_jax.train.config import validate
from molmo_jax.train.loop import pipeline_tasks

REPO = Path(__file__).resolve().parent.parent


def _load_config(name: str, arg: str = "tiny") -> ml_collections.ConfigDict:
    return load_config(name, arg)


def _train_tokenizer(texts: list[str], folder: Path) -> Path:
    return train_bpe_tokenizer(folder, texts, vocab_size=600)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    import pyarrow.parquet as pq

    from molmo_jax.data.prepare import prepare_pixmo
    from molmo_jax.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    written = write_synthetic(root / "raw", 40, seed=3, image_size=112)
    texts = ["User: Assistant: long_caption transcript point_count pointing"]
    for name, info in written.items():
        if name == "images":
            continue
        for row in pq.read_table(info["path"]).to_pylist():
            texts += [str(row[k]) for k in ("caption", "question", "answer", "label") if row.get(k)]
            texts += list(row.get("transcripts") or [])
        prepare_pixmo(name, Path(info["path"]).parent, root / "data", progress=False)
    return root / "data", _train_tokenizer(texts, root / "tokenizer")


def _tiny(stage: str, data: Path, tokenizer: Path, steps: int) -> ml_collections.ConfigDict:
    c = _load_config("stage1_caption" if stage == "stage1" else "stage2_multitask")
    c.data.data_dir = str(data)
    c.model.tokenizer = str(tokenizer)
    c.train.steps = steps
    c.train.log_every = 1
    c.train.checkpoint_every = 3
    c.mesh.data = 4  # 4 of the 8 simulated devices: the batch of 4 is split over them
    return c


@pytest.mark.slow
def test_stage1_then_stage2_loss_falls(synthetic, tmp_path):
    from molmo_jax.train.loop import train

    data, tok = synthetic
    s1 = train(_tiny("stage1", data, tok, 12), tmp_path / "s1")
    losses = [h["loss"] for h in s1["history"]]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert list((tmp_path / "s1" / "tensorboard").glob("events.out.tfevents.*"))
    c2 = _tiny("stage2", data, tok, 6)
    c2.model.checkpoint = s1["hf_checkpoint"]
    c2.model.tokenizer = ""  # the stage-1 export carries its tokenizer
    s2 = train(c2, tmp_path / "s2")
    assert s2["start_step"] == 0 and len(s2["history"]) == 6
    assert all(np.isfinite(h["loss"]) for h in s2["history"])
    assert (tmp_path / "s2" / "hf" / "model.safetensors").exists()


@pytest.mark.slow
def test_resume_continues_exactly(synthetic, tmp_path):
    from molmo_jax.train.loop import train

    data, tok = synthetic
    full = train(_tiny("stage1", data, tok, 8), tmp_path / "full")
    first = train(_tiny("stage1", data, tok, 8), tmp_path / "resumed", stop_after=6)
    assert first["end_step"] == 6
    second = train(_tiny("stage1", data, tok, 8), tmp_path / "resumed")
    assert second["start_step"] == 6
    expected = [h["loss"] for h in full["history"] if h["step"] > 6]
    assert [h["loss"] for h in second["history"]] == expected  # bitwise on CPU
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["end_step"] == 8


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("model.init", "random", "config.model.init='random'"),
        ("train.grad_accum_steps", 3, "config.train.grad_accum_steps=3: must divide data.batch_size=4"),
        ("optimizer.final_lr_fraction", 2.0, "config.optimizer.final_lr_fraction=2.0"),
        ("data.tasks", [], "config.data.tasks=()"),
        ("data.task_weights", {"pixmo_cap": 1.0}, "must give a weight to each task of data.tasks"),
        ("data.task_weights", {"pixmo_cap_transcript": 0.0}, "weights must be positive numbers"),
    ],
)
def test_bad_config_values_are_named(key, value, message):
    c = _load_config("stage1_caption")
    node = c
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")
    ):
        validate(c)


def test_task_weights_reach_the_pipeline_in_task_order():
    c = _load_config("stage2_multitask", "tiny")
    assert pipeline_tasks(c) == list(c.data.tasks)  # no weights: the recipe's mixture rates
    c.model.checkpoint = "some/checkpoint"
    c.data.tasks = ["pixmo_points", "pixmo_clocks"]
    c.data.task_weights = dict(pixmo_clocks=1, pixmo_points=3)
    validate(c)
    # the order of data.tasks, not of the weights: the mixture's record order depends on it
    assert list(pipeline_tasks(c).items()) == [("pixmo_points", 3.0), ("pixmo_clocks", 1.0)]


def test_tasks_and_weights_override_from_the_command_line():
    from absl import flags
    from ml_collections import config_flags

    argv = [
        "train",
        f"--config={REPO / 'configs' / 'finetune_custom.py'}:tiny",
        "--config.data.tasks=('my_dataset', 'pixmo_points')",
        "--config.data.task_weights={'my_dataset': 3, 'pixmo_points': 1}",
    ]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
    values(argv)
    c = values.config
    c.model.checkpoint = "some/checkpoint"
    validate(c)
    assert pipeline_tasks(c) == {"my_dataset": 3.0, "pixmo_points": 1.0}


def test_unknown_config_key_is_rejected():
    c = _load_config("stage2_multitask", "molmo_7b_d")
    c.lock()
    with pytest.raises(AttributeError, match="lr_peak"):
        c.optimizer.lr_peak = 1.0


@pytest.mark.parametrize("name", ["stage1_caption", "stage2_multitask", "finetune_custom"])
@pytest.mark.parametrize("preset", ["molmoe_1b", "molmo_7b_o", "molmo_7b_d", "molmo_72b", "tiny"])
def test_every_config_and_preset_builds(name, preset):
    c = _load_config(name, preset)
    if c.model.init != "scratch":
        c.model.checkpoint = "some/checkpoint"
    validate(c)


@pytest.mark.slow  # ~25 s on 2 cores
def test_dry_run_memory_reports_per_device_sizes():
    from molmo_jax.train.loop import dry_run_memory

    c = _load_config("stage1_caption")
    c.data.batch_size = 8
    c.mesh.data, c.mesh.fsdp = 2, 4
    r = dry_run_memory(c)
    assert r["devices"] == 8 and r["mesh"]["fsdp"] == 4
    # fp32 parameters + two Adam moments, sharded 4 ways over fsdp where the dimensions divide
    assert r["argument_bytes"] > 0 and r["temp_bytes"] > 0
    assert r["argument_bytes"] < 3 * 4 * r["parameters"] + 4 * 2**20
    c.data.batch_size = 6
    with pytest.raises(ConfigError, match="batch_size=6 is not divisible by the 8 data-parallel devices"):
        dry_run_memory(c)


@pytest.mark.slow
def test_two_processes_match_one(synthetic, tmp_path):
    """Two processes (jax.distributed on 127.0.0.1, gloo collectives), each feeding its own slice of
    the data, give the losses of one process training the same global batches."""
    import os
    import socket
    import subprocess
    import sys

    from molmo_jax.train.loop import train

    data, tok = synthetic
    steps = 4
    single = _tiny("stage1", data, tok, steps)
    single.mesh.data = 2
    single.train.export_hf = False
    single.train.response_residual_dropout = 0.0  # as the workers (see multihost_train_worker.py)
    expected = [h["loss"] for h in train(single, tmp_path / "single")["history"]]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "multihost_train_worker.py"),
                f"--process_id={i}",
                f"--port={port}",
                f"--data={data}",
                f"--tokenizer={tok}",
                f"--workdir={tmp_path / 'multi'}",
                f"--steps={steps}",
                f"--out={tmp_path / f'losses{i}.json'}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    got = [json.loads((tmp_path / f"losses{i}.json").read_text()) for i in range(2)]
    assert got[0] == got[1]  # both processes see the same global loss
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)  # same examples, other order within the batch


@pytest.mark.slow
def test_sigkill_then_resume_continues_exactly(synthetic, tmp_path):
    """Kill the trainer with SIGKILL at a random point after a checkpoint; the resumed run's losses
    equal the uninterrupted run's from the restored step on (bitwise on CPU)."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from molmo_jax.train.loop import train

    data, tok = synthetic
    steps = 10
    full = train(_tiny("stage1", data, tok, steps), tmp_path / "full")
    expected = {h["step"]: h["loss"] for h in full["history"]}

    workdir = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "molmo_jax.cli.train",
        f"--config={REPO / 'configs' / 'stage1_caption.py'}:tiny",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data}",
        f"--config.model.tokenizer={tok}",
        f"--config.train.steps={steps}",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=3",
        "--config.mesh.data=4",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (workdir / "checkpoints" / "3").exists():
        time.sleep(0.2)
    time.sleep(random.uniform(0.0, 2.0))  # somewhere after the first save, maybe during the next
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (workdir / "checkpoints" / "3").exists(), "the trainer never saved step 3"

    resumed = train(_tiny("stage1", data, tok, steps), workdir)
    start = resumed["start_step"]
    assert start >= 3 and start % 3 == 0
    got = {h["step"]: h["loss"] for h in resumed["history"]}
    assert got and got == {s: v for s, v in expected.items() if s > start}
