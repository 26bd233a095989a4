"""launch/*.sh: printed and executed commands, argument errors (gcloud and python are faked)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TPU_POD = REPO_ROOT / "launch" / "tpu_pod.sh"
GPU_LOCAL = REPO_ROOT / "launch" / "gpu_local.sh"

CONFIG = "configs/stage1_caption.py:molmo_7b_d"
WORKDIR = "gs://my-bucket/runs/stage 1"  # a space, to check quoting
TPU_ARGS = ["--project=my-proj", "--zone", "us-central2-b", "--tpu=molmo-pod"]

# Records its arguments and environment as JSON in $RECORD (stands in for python on a worker).
RECORDER = f"""#!/bin/sh
exec {sys.executable} -c 'import json, os, sys
json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, open(os.environ["RECORD"], "w"))' "$@"
"""

# Logs each call; `tpu-vm ssh ... --command=CMD` runs CMD here, as one worker would.
FAKE_GCLOUD = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$GCLOUD_LOG"
for arg in "$@"; do
  case "$arg" in --command=*) bash -c "${arg#--command=}" ;; esac
done
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fakes(tmp_path):
    """A PATH whose gcloud is fake, a recorder for python, and the files they write."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "gcloud", FAKE_GCLOUD)
    recorder = executable(tmp_path / "python_recorder", RECORDER)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GCLOUD_LOG": str(tmp_path / "gcloud.log"),
        "RECORD": str(tmp_path / "record.json"),
    }
    env.pop("XLA_FLAGS", None)
    return env, recorder, tmp_path


def run(script: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60)


def test_tpu_dry_run_prints_create_and_fan_out(fakes):
    env, _, tmp = fakes
    out = run(
        TPU_POD, *TPU_ARGS, "--create", "--accelerator=v5p-64", f"--config={CONFIG}", "--workdir", WORKDIR,
        "--dry_run", "--", "--config.train.lr=1e-4", env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    create, ssh = out.stdout.strip().splitlines()
    assert create.startswith("+ gcloud compute tpus tpu-vm create molmo-pod ")
    assert "--accelerator-type=v5p-64" in create and "--version=v2-alpha-tpuv5" in create
    assert ssh.startswith("+ gcloud compute tpus tpu-vm ssh molmo-pod --project=my-proj --zone=us-central2-b")
    assert "--worker=all" in ssh
    assert "python3 -m molmo_jax.cli.train" in ssh and f"--config={CONFIG}" in ssh
    assert "--workdir=gs://my-bucket/runs/stage 1" in ssh and "--config.train.lr=1e-4" in ssh
    assert not (tmp / "gcloud.log").exists()  # a dry run runs nothing


def test_tpu_runs_the_same_command_on_all_workers(fakes):
    env, recorder, tmp = fakes
    out = run(
        TPU_POD, *TPU_ARGS, f"--repo_dir={tmp}", f"--python={recorder}", "--env=MY_FLAG=a b",
        f"--config={CONFIG}", f"--workdir={WORKDIR}", "--", "--config.name=it's", env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (call,) = (tmp / "gcloud.log").read_text().splitlines()
    assert call.startswith("compute tpus tpu-vm ssh molmo-pod --project=my-proj --zone=us-central2-b")
    assert " --worker=all " in call
    record = json.loads((tmp / "record.json").read_text())
    assert record["argv"] == ["-m", "molmo_jax.cli.train", f"--config={CONFIG}", f"--workdir={WORKDIR}",
                              "--config.name=it's"]  # fmt: skip
    assert record["env"]["MY_FLAG"] == "a b"


def test_tpu_setup_command_and_detached_log(fakes):
    env, _, _ = fakes
    out = run(
        TPU_POD, *TPU_ARGS, "--setup=git pull", "--command=python3 -m molmo_jax.cli.train --help",
        "--log=/tmp/train.log", "--dry_run", env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    setup, main = out.stdout.strip().splitlines()
    assert "--worker=all" in setup and "cd ~/molmo-jax && git pull" in setup
    assert "--worker=all" in main and "nohup bash -c" in main and "> /tmp/train.log 2>&1" in main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--zone=z", "--tpu=t", f"--config={CONFIG}", "--workdir=w"], "--project is required"),
        (["--project=p", "--tpu=t", f"--config={CONFIG}", "--workdir=w"], "--zone is required"),
        (["--project=p", "--zone=z", f"--config={CONFIG}", "--workdir=w"], "--tpu is required"),
        ([*TPU_ARGS, "--workdir=w"], "--config is required"),
        ([*TPU_ARGS, f"--config={CONFIG}"], "--workdir is required"),
        ([*TPU_ARGS, f"--config={CONFIG}", "--workdir"], "--workdir needs a value"),
        ([*TPU_ARGS, "--create", "--command=x"], "--accelerator is required with --create"),
        ([*TPU_ARGS, "--create", "--accelerator=v9-8", "--command=x"], "no default --version"),
        ([*TPU_ARGS, "--command=x", "--workers=3"], "unknown option --workers"),
        ([*TPU_ARGS, "--command=x", "stray"], "unexpected argument 'stray'"),
        ([*TPU_ARGS, "--command=x", "--env=1X=2"], "--env expects KEY=VALUE"),
    ],
)
def test_tpu_argument_errors(fakes, args, message):
    env, _, tmp = fakes
    out = run(TPU_POD, *args, "--dry_run", env=env)
    assert out.returncode == 2
    assert f"error: {message}" in out.stderr and out.stdout == ""
    assert not (tmp / "gcloud.log").exists()


def test_gpu_dry_run_prints_environment_and_command(fakes):
    env, _, _ = fakes
    env["XLA_FLAGS"] = "--xla_dump_to=/tmp/dump"
    out = run(
        GPU_LOCAL, "--num_gpus=4", "--mem_fraction=0.9", f"--config={CONFIG}", f"--workdir={WORKDIR}",
        "--dry_run", "--", "--config.train.steps=10", env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.strip().splitlines()
    assert line.startswith("+ env CUDA_VISIBLE_DEVICES=0,1,2,3 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 ")
    assert "'XLA_FLAGS=--xla_dump_to=/tmp/dump --xla_gpu_enable_latency_hiding_scheduler=true'" in line
    assert f"-m molmo_jax.cli.train --config={CONFIG} '--workdir={WORKDIR}' --config.train.steps=10" in line


def test_gpu_runs_command_with_devices_and_flags(fakes):
    env, recorder, tmp = fakes
    out = run(
        GPU_LOCAL, "--gpus", "2,5", f"--python={recorder}", "--xla_flags=--xla_dump_to=/tmp/d",
        f"--config={CONFIG}", f"--workdir={WORKDIR}", env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp / "record.json").read_text())
    assert record["argv"] == ["-m", "molmo_jax.cli.train", f"--config={CONFIG}", f"--workdir={WORKDIR}"]
    assert record["env"]["CUDA_VISIBLE_DEVICES"] == "2,5"
    assert record["env"]["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true --xla_dump_to=/tmp/d"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in record["env"]

    failing = run(GPU_LOCAL, "--command=exit 3", env=env)
    assert failing.returncode == 3  # the command's exit status comes back


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workdir=w"], "--config is required"),
        ([f"--config={CONFIG}"], "--workdir is required"),
        (["--command=x", "--gpus=0,x"], "--gpus expects a list"),
        (["--command=x", "--num_gpus=0"], "--num_gpus expects a positive integer"),
        (["--command=x", "--gpus=0", "--num_gpus=1"], "give --gpus or --num_gpus, not both"),
        (["--command=x", "--mem_fraction=1.5"], "--mem_fraction expects a number"),
        (["--command=x", f"--config={CONFIG}"], "--command excludes"),
        (["--command"], "--command needs a value"),
    ],
)
def test_gpu_argument_errors(fakes, args, message):
    env, _, _ = fakes
    out = run(GPU_LOCAL, *args, "--dry_run", env=env)
    assert out.returncode == 2
    assert f"error: {message}" in out.stderr and out.stdout == ""


@pytest.mark.parametrize("script", [TPU_POD, GPU_LOCAL])
def test_usage_and_strict_mode(script):
    out = run(script, "-h")
    assert out.returncode == 0 and out.stdout.startswith("Usage: launch/")
    assert "--dry_run" in out.stdout
    assert "set -euo pipefail" in script.read_text()
