"""Training checkpoints: Orbax behind one small class.

One step directory holds one composite checkpoint:

```
<directory>/<step>/
  state/           the training pytree (params as nnx.State, optax state, step, ...), sharded arrays
  metadata/        a JSON dict (config, wall clock, ...), optional
  data_iterator/   process_<i>-of-<n>.json: one data-iterator state per JAX process, optional
```

Saves are asynchronous (device arrays are copied to host before `save` returns, so the caller may
donate or overwrite them) and atomic: Orbax writes into `<step>.orbax-checkpoint-tmp` and renames
it when every item is written (on GCS it writes `commit_success.txt` last instead). Steps listed,
restored and kept are finalised ones only; a save killed half way leaves a temporary directory that
is ignored, and removed in the background when the next `Checkpointer` opens the directory.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, Protocol

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

PyTree = Any

STATE_ITEM = "state"
METADATA_ITEM = "metadata"
ITERATOR_ITEM = "data_iterator"


class DataIterator(Protocol):
    """What a checkpointable data iterator offers (Grain's DatasetIterator and DataLoaderIterator do)."""

    def get_state(self) -> bytes | dict: ...

    def set_state(self, state: Any) -> None: ...


# ---------------------------------------------------------------------------------------------------
# Data-iterator state: one JSON file per process, captured when `save` is called.


def _iterator_filename() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def _encode_iterator_state(state: bytes | dict) -> dict:
    if isinstance(state, bytes | bytearray):
        return {"format": "bytes", "state": base64.b64encode(bytes(state)).decode("ascii")}
    return {"format": "json", "state": state}


def _decode_iterator_state(record: dict) -> bytes | dict:
    if record["format"] == "bytes":
        return base64.b64decode(record["state"])
    return record["state"]


class IteratorStateHandler(ocp.CheckpointHandler):
    """Writes and reads this process's data-iterator state (every process writes its own file)."""

    def save(self, directory: epath.Path, args: IteratorStateSave) -> None:
        (directory / _iterator_filename()).write_text(json.dumps(_encode_iterator_state(args.state)))

    def restore(self, directory: epath.Path, args: IteratorStateRestore | None = None) -> bytes | dict:
        path = directory / _iterator_filename()
        if not path.exists():
            found = sorted(p.name for p in directory.iterdir())
            raise FileNotFoundError(
                f"no data-iterator state for this process at {path} (found {found}); "
                "was the checkpoint written with a different number of processes?"
            )
        return _decode_iterator_state(json.loads(path.read_text()))


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
    state: bytes | dict


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
    pass


# ---------------------------------------------------------------------------------------------------


def _is_local(directory: epath.Path) -> bool:
    return "://" not in os.fspath(directory)


def _ensure_writable(directory: epath.Path) -> None:
    """Creates `directory` and fails early, naming it, when it cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"checkpoint directory {directory} cannot be created: {e}") from e
    if _is_local(directory) and not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"checkpoint directory {directory} is not writable")


def _preservation_policy(keep_last: int | None, keep_every: int | None) -> ocm.PreservationPolicy:
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None (keep all), got {keep_last}")
    latest = ocm.LatestN(keep_last)  # n=None keeps everything
    if keep_every is None:
        return latest
    if keep_every < 1:
        raise ValueError(f"keep_every must be >= 1, got {keep_every}")
    return ocm.AnyPreservationPolicy([latest, ocm.EveryNSteps(keep_every)])


def _save_policy(save_interval_steps: int) -> ocm.SaveDecisionPolicy:
    if save_interval_steps < 1:
        raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
    # Multiples of the interval, and any step once a preemption notice has arrived.
    return ocm.AnySavePolicy(
        [ocm.FixedIntervalPolicy(save_interval_steps), ocm.PreemptionCheckpointingPolicy()]
    )


class Checkpointer:
    """Saves and restores training state, metadata and data-iterator state under one directory.

    Args:
      directory: local path or `gs://...`; created if missing.
      save_interval_steps: `save` writes only at multiples of this (or when `force=True`, or after
        a preemption notice).
      keep_last: keep the newest N finalised checkpoints (None keeps all) ...
      keep_every: ... plus every step that is a multiple of this.
      async_save: write in a background thread; `wait()` blocks until written.
      read_only: restore only (e.g. evaluating a run's checkpoints); nothing is written or deleted.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        save_interval_steps: int,
        keep_last: int | None = 3,
        keep_every: int | None = None,
        async_save: bool = True,
        read_only: bool = False,
    ):
        directory = os.fspath(directory)
        if "://" not in directory:  # Orbax wants absolute local paths (gs:// and the like pass as given)
            directory = os.path.abspath(directory)
        self.directory = epath.Path(directory)
        self.read_only = read_only
        if read_only:
            if not self.directory.exists():
                raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
        else:
            _ensure_writable(self.directory)
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=_save_policy(save_interval_steps),
            preservation_policy=_preservation_policy(keep_last, keep_every),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=False,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                STATE_ITEM: ocp.PyTreeCheckpointHandler(),
                METADATA_ITEM: ocp.JsonCheckpointHandler(),
                ITERATOR_ITEM: IteratorStateHandler(),
            },
        )

    # -- saving ------------------------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` would write (interval, preemption, newer than the latest)."""
        return self._manager.should_save(step)

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        data_iterator: DataIterator | None = None,
        metadata: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Starts saving `state` (+ iterator state, + JSON metadata) as `step`; True if a save started.

        Without `force` only steps chosen by the save policy are written; with it any step not already
        saved. The iterator state is read now, so the iterator may advance while the save runs.
        """
        if self.read_only:
            return False
        if force:
            if step in self._manager.all_steps():
                return False
        elif not self._manager.should_save(step):
            return False
        items: dict[str, ocp.args.CheckpointArgs] = {STATE_ITEM: ocp.args.PyTreeSave(state)}
        if metadata is not None:
            items[METADATA_ITEM] = ocp.args.JsonSave(dict(metadata))
        if data_iterator is not None:
            items[ITERATOR_ITEM] = IteratorStateSave(data_iterator.get_state())
        return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def reached_preemption(self, step: int) -> bool:
        """True once the cluster announced a preemption (save now, then stop)."""
        return self._manager.reached_preemption(step)

    # -- restoring ---------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Steps oldest first: those finalised on disk when opened plus those saved since (a save still
        in flight included; `wait()` finishes it). Interrupted saves are never listed."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest step of `all_steps()`, or None when there is none."""
        return self._manager.latest_step()

    def restore(
        self,
        step: int | None,
        abstract_state: PyTree,
        *,
        data_iterator: DataIterator | None = None,
        partial: bool = False,
    ) -> tuple[int, PyTree, dict]:
        """Restores `step` (None: the latest finalised one) into the layout of `abstract_state`.

        `abstract_state` is the pytree to restore, with `jax.ShapeDtypeStruct` (or array) leaves whose
        `.sharding` says where each array is born: arrays are read shard by shard onto those devices,
        whatever mesh the checkpoint was written from. With `partial=True` it may name a subset of the
        saved tree (e.g. `{"params": ...}` to start a new stage from a previous stage's weights).
        `data_iterator`, when given, is moved to the saved position with `set_state`.
        Returns `(step, state, metadata)`; metadata is `{}` when none was saved.
        """
        self.wait()  # a save in flight is finalised before it can be read
        step = self._resolve_step(step)
        step_dir = self.directory / str(step)
        items: dict[str, ocp.args.CheckpointArgs] = {
            STATE_ITEM: ocp.args.PyTreeRestore(
                item=abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
                partial_restore=partial,
            )
        }
        has_metadata = (step_dir / METADATA_ITEM).exists()
        if has_metadata:
            items[METADATA_ITEM] = ocp.args.JsonRestore()
        if data_iterator is not None:
            if not (step_dir / ITERATOR_ITEM).exists():
                raise FileNotFoundError(f"checkpoint {step_dir} holds no data-iterator state")
            items[ITERATOR_ITEM] = IteratorStateRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if data_iterator is not None:
            data_iterator.set_state(restored[ITERATOR_ITEM])
        metadata = dict(restored[METADATA_ITEM]) if has_metadata else {}
        return step, restored[STATE_ITEM], metadata

    def _resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no finalised checkpoint in {self.directory}")
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(
                f"no finalised checkpoint for step {step} in {self.directory} (steps found: {steps})"
            )
        return step

    # -- lifetime ----------------------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is written and finalised."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, deletions and the clean-up of interrupted saves, then releases
        Orbax's resources."""
        self._manager.close()
        # Orbax removes leftover temporary directories in a background thread started when the
        # manager is created and only awaits it before the next save; await it here too.
        getattr(self._manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
