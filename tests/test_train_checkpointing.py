"""Checkpointer: composite round trip, sharded restore, preservation, interval, interrupted saves."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from molmo_jax.train.checkpointing import Checkpointer

REPO_ROOT = Path(__file__).resolve().parent.parent
TMP_SUFFIX = ".orbax-checkpoint-tmp"


class FakeIterator:
    """The iterator protocol: get_state / set_state, plus a position that advances."""

    def __init__(self, position: int = 0, as_bytes: bool = False):
        self.position = position
        self.as_bytes = as_bytes

    def get_state(self):
        if self.as_bytes:  # not valid UTF-8: must survive as raw bytes
            return b"\xff\x00pos=" + str(self.position).encode()
        return {"position": self.position, "epoch": 2}

    def set_state(self, state) -> None:
        if self.as_bytes:
            assert state.startswith(b"\xff\x00pos=")
            self.position = int(state[len(b"\xff\x00pos=") :])
        else:
            assert state["epoch"] == 2
            self.position = state["position"]


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(16, 8, rngs=rngs)
        self.proj = nnx.Linear(8, 4, rngs=rngs)


def train_state(seed: int = 0) -> dict:
    """params (nnx.State) + adamw state after one update (non-zero moments) + step."""
    params = nnx.state(Tiny(nnx.Rngs(seed)), nnx.Param)
    opt = optax.adamw(1e-2)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)
    return {"params": params, "opt_state": opt_state, "step": jnp.asarray(seed + 1, jnp.int32)}


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def step_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_round_trip_params_optimizer_step_iterator_metadata(tmp_path):
    state = train_state(seed=3)
    with Checkpointer(tmp_path, save_interval_steps=10) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(10, state, data_iterator=FakeIterator(position=42), metadata={"lr": 0.1, "n": [1]})

    ckpt = Checkpointer(tmp_path, save_interval_steps=10)  # a fresh process would see the same
    assert ckpt.latest_step() == 10
    it = FakeIterator()
    step, restored, metadata = ckpt.restore(None, abstract(state), data_iterator=it)
    ckpt.close()

    assert step == 10 and metadata == {"lr": 0.1, "n": [1]} and it.position == 42
    assert isinstance(restored["params"], nnx.State)
    assert type(restored["opt_state"][0]) is type(state["opt_state"][0])  # ScaleByAdamState
    assert isinstance(restored["opt_state"][0].mu, nnx.State)
    assert_trees_equal(restored, state)
    assert float(np.abs(np.asarray(restored["opt_state"][0].mu["proj"]["kernel"][...])).max()) > 0


def test_relative_directory_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = train_state(seed=4)
    with Checkpointer("runs/ckpt", save_interval_steps=1) as ckpt:  # as `--workdir runs/x` gives
        assert ckpt.save(1, state)
    monkeypatch.chdir(tmp_path.parent)  # another working directory sees the same absolute path
    with Checkpointer(tmp_path / "runs" / "ckpt", save_interval_steps=1) as ckpt:
        step, restored, _ = ckpt.restore(None, abstract(state))
    assert step == 1
    assert_trees_equal(restored, state)


def test_sharded_restore_is_born_on_the_mesh(tmp_path):
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    specs = {"w": P("fsdp", "tensor"), "e": P(("data", "fsdp"), None), "b": P("tensor"), "s": P()}
    host = {
        "w": np.arange(64 * 32, dtype=np.float32).reshape(64, 32),
        "e": np.arange(16 * 6, dtype=np.float32).reshape(16, 6) - 7,
        "b": np.linspace(-1, 1, 32, dtype=np.float32),
        "s": np.asarray(5, np.int32),
    }
    tree = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()}
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(1, tree)
        _, restored, _ = ckpt.restore(1, abstract(tree))
        # Restoring onto another layout reshards while reading (e.g. a different mesh shape).
        other = {k: NamedSharding(mesh, P(None, "data") if v.ndim == 2 else P()) for k, v in host.items()}
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=other[k]) for k, v in host.items()}
        _, resharded, _ = ckpt.restore(1, target)

    for key, value in host.items():
        got = restored[key]
        assert got.sharding == NamedSharding(mesh, specs[key]), key
        assert len(got.addressable_shards) == 8
        np.testing.assert_array_equal(np.asarray(got), value)
        assert resharded[key].sharding == other[key], key
        np.testing.assert_array_equal(np.asarray(resharded[key]), value)
    shard = restored["w"].addressable_shards[0]
    assert shard.data.shape == (32, 16)
    np.testing.assert_array_equal(np.asarray(shard.data), host["w"][shard.index])


def test_partial_restore_of_params_only(tmp_path):
    state = train_state(seed=1)
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(4, state)
        _, restored, metadata = ckpt.restore(4, {"params": abstract(state["params"])}, partial=True)
    assert set(restored) == {"params"} and metadata == {}
    assert_trees_equal(restored["params"], state["params"])


def test_state_may_be_donated_once_save_returns(tmp_path):
    # The train step donates its input state; the async save must already hold its own copy.
    x = jnp.arange(100_000, dtype=jnp.float32)
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(1, {"x": x})
        x.delete()
        ckpt.wait()
        _, restored, _ = ckpt.restore(1, {"x": jax.ShapeDtypeStruct((100_000,), jnp.float32)})
    np.testing.assert_array_equal(np.asarray(restored["x"]), np.arange(100_000, dtype=np.float32))


def test_preservation_keeps_last_n_plus_every_k(tmp_path):
    tree = {"x": jnp.zeros(3)}
    with Checkpointer(tmp_path, save_interval_steps=1, keep_last=2, keep_every=4) as ckpt:
        for step in range(1, 11):
            assert ckpt.save(step, {"x": tree["x"] + step})
    assert step_dirs(tmp_path) == ["10", "4", "8", "9"]
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        assert ckpt.all_steps() == [4, 8, 9, 10]
        _, restored, _ = ckpt.restore(8, abstract(tree))
    np.testing.assert_array_equal(np.asarray(restored["x"]), np.full(3, 8.0))


def test_save_interval_and_force(tmp_path):
    tree = {"x": jnp.ones(2)}
    with Checkpointer(tmp_path, save_interval_steps=5, keep_last=None) as ckpt:
        saved = [step for step in range(13) if ckpt.save(step, tree)]
        assert saved == [0, 5, 10]
        assert not ckpt.should_save(11) and ckpt.should_save(15)
        assert ckpt.save(12, tree, force=True)  # e.g. the final step of a run
        assert not ckpt.save(12, tree, force=True)  # already saved: no error, nothing written
    assert step_dirs(tmp_path) == ["0", "10", "12", "5"]


def test_leftover_temporary_directory_is_ignored_and_cleaned(tmp_path):
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(1, {"x": jnp.full(4, 1.0)}, data_iterator=FakeIterator(1))
        ckpt.save(2, {"x": jnp.full(4, 2.0)}, data_iterator=FakeIterator(2))
    # A save of step 3 that died before Orbax's final rename: all the data, but a temporary name.
    leftover = tmp_path / f"3{TMP_SUFFIX}"  # the name Orbax gives a save in progress
    shutil.copytree(tmp_path / "2", leftover)

    ckpt = Checkpointer(tmp_path, save_interval_steps=1)
    assert ckpt.latest_step() == 2
    with pytest.raises(FileNotFoundError, match=rf"step 3 in {re.escape(str(tmp_path))}.*\[1, 2\]"):
        ckpt.restore(3, {"x": jax.ShapeDtypeStruct((4,), jnp.float32)})
    it = FakeIterator()
    step, restored, _ = ckpt.restore(None, abstract({"x": jnp.zeros(4)}), data_iterator=it)
    ckpt.close()
    assert step == 2 and it.position == 2
    np.testing.assert_array_equal(np.asarray(restored["x"]), np.full(4, 2.0))
    assert not leftover.exists()  # cleaned up when the directory was opened


KILLED_SAVE_SCRIPT = """
import asyncio, sys
import jax.numpy as jnp
from orbax.checkpoint._src.path import atomicity
from molmo_jax.train.checkpointing import Checkpointer

ckpt = Checkpointer(sys.argv[1], save_interval_steps=1)
ckpt.save(1, {"x": jnp.full(1024, 1.0)})
ckpt.wait()

async def hang(self, *args, **kwargs):  # every item written; the save stops just before committing
    print("FINALIZING", flush=True)
    await asyncio.sleep(3600)

atomicity.AtomicRenameTemporaryPath.finalize = hang
ckpt.save(2, {"x": jnp.full(1024, 2.0)})
ckpt.wait()
"""


def test_save_killed_before_commit_is_ignored(tmp_path):
    directory = tmp_path / "ckpt"
    script = tmp_path / "killed_save.py"
    script.write_text(textwrap.dedent(KILLED_SAVE_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "XLA_FLAGS": ""}
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(directory)], stdout=subprocess.PIPE, stderr=err, env=env
        )
        try:
            deadline = time.monotonic() + 90
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else b""
            assert line.strip() == b"FINALIZING", (tmp_path / "stderr.txt").read_text()[-3000:]
        finally:
            proc.kill()  # SIGKILL: no cleanup handler runs
            proc.wait()
            proc.stdout.close()

    leftovers = [p for p in directory.iterdir() if TMP_SUFFIX in p.name]
    assert step_dirs(directory)[0] == "1" and len(leftovers) == 1 and leftovers[0].name.startswith("2")
    assert any(leftovers[0].rglob("*")), "the interrupted save had written data"

    with Checkpointer(directory, save_interval_steps=1) as ckpt:
        assert ckpt.all_steps() == [1]
        step, restored, _ = ckpt.restore(None, {"x": jax.ShapeDtypeStruct((1024,), jnp.float32)})
    assert step == 1
    np.testing.assert_array_equal(np.asarray(restored["x"]), np.ones(1024))
    assert step_dirs(directory) == ["1"]


@pytest.mark.parametrize("as_bytes", [False, True])
def test_iterator_state_is_one_file_per_process(tmp_path, as_bytes):
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(7, {"x": jnp.zeros(1)}, data_iterator=FakeIterator(123, as_bytes=as_bytes))
        it = FakeIterator(0, as_bytes=as_bytes)
        ckpt.restore(7, abstract({"x": jnp.zeros(1)}), data_iterator=it)
    assert it.position == 123
    saved = tmp_path / "7" / "data_iterator" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    assert json.loads(saved.read_text())["format"] == ("bytes" if as_bytes else "json")


def test_iterator_state_captured_when_save_is_called(tmp_path):
    it = FakeIterator(5)
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(1, {"x": jnp.zeros(1)}, data_iterator=it)
        it.position = 99  # training goes on while the save is written
        ckpt.wait()
        fresh = FakeIterator()
        ckpt.restore(1, abstract({"x": jnp.zeros(1)}), data_iterator=fresh)
    assert fresh.position == 5


def test_grain_iterator_resumes_identically(tmp_path):
    grain = pytest.importorskip("grain")
    dataset = grain.MapDataset.range(100).shuffle(seed=1).to_iter_dataset()
    it = iter(dataset)
    seen = [next(it) for _ in range(10)]
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(10, {"x": jnp.zeros(1)}, data_iterator=it)
        expected = [next(it) for _ in range(30)]
        resumed = iter(dataset)
        ckpt.restore(10, abstract({"x": jnp.zeros(1)}), data_iterator=resumed)
    assert [next(resumed) for _ in range(30)] == expected
    assert sorted(seen + expected) != list(range(40))  # shuffled, so the check is not trivial
    assert len(set(seen + expected)) == 40


def test_errors_name_the_directory(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match=re.escape(str(blocker / "ckpt"))):
        Checkpointer(blocker / "ckpt", save_interval_steps=1)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        Checkpointer(tmp_path / "missing", save_interval_steps=1, read_only=True)
    with pytest.raises(ValueError, match="save_interval_steps"):
        Checkpointer(tmp_path / "x", save_interval_steps=0)
    with pytest.raises(ValueError, match="keep_last"):
        Checkpointer(tmp_path / "x", save_interval_steps=1, keep_last=0)

    empty = tmp_path / "empty"
    with Checkpointer(empty, save_interval_steps=1) as ckpt:
        with pytest.raises(FileNotFoundError, match=re.escape(f"no finalised checkpoint in {empty}")):
            ckpt.restore(None, {"x": jax.ShapeDtypeStruct((1,), jnp.float32)})
        ckpt.save(1, {"x": jnp.zeros(1)})
        with pytest.raises(FileNotFoundError, match="holds no data-iterator state"):
            ckpt.restore(1, abstract({"x": jnp.zeros(1)}), data_iterator=FakeIterator())


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(PermissionError, match=re.escape(str(locked))):
            Checkpointer(locked, save_interval_steps=1)
    finally:
        locked.chmod(0o700)


def test_read_only_restores_without_writing(tmp_path):
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(3, {"x": jnp.full(2, 3.0)})
    leftover = tmp_path / f"4{TMP_SUFFIX}-1"
    leftover.mkdir()
    with Checkpointer(tmp_path, save_interval_steps=1, read_only=True) as ckpt:
        assert not ckpt.save(5, {"x": jnp.zeros(2)})
        assert not ckpt.save(6, {"x": jnp.zeros(2)}, force=True)
        step, restored, _ = ckpt.restore(None, abstract({"x": jnp.zeros(2)}))
    assert step == 3 and float(restored["x"][0]) == 3.0
    assert leftover.exists() and step_dirs(tmp_path) == ["3", leftover.name]


MULTI_PROCESS_WORKER = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id, port, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from molmo_jax.train.checkpointing import Checkpointer

class It:
    def __init__(self, position): self.position = position
    def get_state(self): return {"position": self.position}
    def set_state(self, state): self.position = state["position"]

sharding = NamedSharding(jax.make_mesh((jax.device_count(),), ("data",)), P("data"))
host = np.arange(32, dtype=np.float32).reshape(8, 4)
x = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
with Checkpointer(directory, save_interval_steps=1) as ckpt:
    ckpt.save(1, {"x": x}, data_iterator=It(100 + process_id), metadata={"k": 1})
    it = It(-1)
    target = {"x": jax.ShapeDtypeStruct(host.shape, host.dtype, sharding=sharding)}
    step, restored, metadata = ckpt.restore(None, target, data_iterator=it)
gathered = np.asarray(multihost_utils.process_allgather(restored["x"], tiled=True))
print("RESULT", step, it.position, metadata["k"], np.array_equal(gathered, host), flush=True)
"""


@pytest.mark.slow
def test_two_processes_keep_one_iterator_state_each(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(MULTI_PROCESS_WORKER))
    flags = "--xla_force_host_platform_device_count=2"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "XLA_FLAGS": flags}
    directory = tmp_path / "ckpt"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), port, str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0].decode() for p in procs]
    for i, out in enumerate(outputs):
        assert f"RESULT 1 {100 + i} 1 True" in out, out[-3000:]
    files = sorted(p.name for p in (directory / "1" / "data_iterator").glob("process_*"))
    assert files == ["process_0-of-2.json", "process_1-of-2.json"]
