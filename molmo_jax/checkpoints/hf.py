"""Hugging Face checkpoint folders <-> NNX models, without torch.

Reading streams tensor by tensor from `model.safetensors` or a sharded
`model.safetensors.index.json` into an abstract (shape-only) model, so host memory holds one
tensor group at a time and nothing is allocated twice; with a mesh each tensor goes straight to
its shards. Writing produces the same names, shapes and dtypes. MolmoE-1B's pickled
`pytorch_model.bin` is converted once to safetensors with `torch.load(weights_only=True)` (the
optional `torch` extra); arbitrary unpickling is never used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from molmo_jax.checkpoints.naming import Rule, detect_molmo_layout, molmo_rules
from molmo_jax.model.config import MolmoConfig, from_hf_config, to_hf_config
from molmo_jax.model.molmo import Molmo
from molmo_jax.model.sharding import DEFAULT_RULES, logical_to_spec

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"


class CheckpointError(ValueError):
    """A checkpoint does not match the model: names the tensor(s) and shapes involved."""


class TensorReader:
    """Lazy access to the tensors of a safetensors file, a sharded index, or several files."""

    def __init__(self, files: Sequence[Path]):
        self._where: dict[str, Path] = {}
        for file in files:
            with safe_open(str(file), framework="numpy") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    self._where[name] = file

    @classmethod
    def from_dir(cls, path: str | Path) -> TensorReader:
        path = Path(path)
        if path.is_file():
            return cls([path])
        index = path / SAFETENSORS_INDEX
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return cls(sorted({path / f for f in weight_map.values()}))
        if (path / SAFETENSORS).exists():
            return cls([path / SAFETENSORS])
        if (path / TORCH_BIN).exists():
            return cls([convert_torch_bin(path / TORCH_BIN)])
        raise CheckpointError(f"{path}: no {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN} found")

    def names(self) -> set[str]:
        return set(self._where)

    def get(self, name: str) -> np.ndarray:
        with safe_open(str(self._where[name]), framework="numpy") as f:
            return f.get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        with safe_open(str(self._where[name]), framework="numpy") as f:
            return tuple(f.get_slice(name).get_shape())


def convert_torch_bin(path: Path, out: Path | None = None) -> Path:
    """One-time conversion of a pickled PyTorch state dict to safetensors (weights_only load)."""
    out = out or path.with_name(SAFETENSORS)
    if out.exists():
        return out
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path} is a pickled PyTorch checkpoint; install the optional extra "
            "`pip install molmo-jax[torch]` "
            "to convert it once to safetensors"
        ) from e
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    arrays = {
        k: v.detach().to(torch.float32).contiguous().numpy()
        if v.dtype == torch.bfloat16
        else v.detach().contiguous().numpy()
        for k, v in state.items()
    }
    tmp = out.with_suffix(".tmp")
    save_file(arrays, str(tmp))
    os.replace(tmp, out)
    return out


def _flat_abstract(model_or_state) -> tuple[nnx.GraphDef | None, nnx.State, dict[str, nnx.Variable]]:
    if isinstance(model_or_state, nnx.Module):
        graphdef, state = nnx.split(model_or_state)
    else:
        graphdef, state = None, model_or_state
    flat = {".".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}
    return graphdef, state, flat


def load_tensors(
    abstract_model: nnx.Module,
    reader: TensorReader,
    rules: Iterable[Rule],
    *,
    dtype=None,
    mesh: jax.sharding.Mesh | None = None,
    axis_rules=DEFAULT_RULES,
    allow_missing: Sequence[str] = (),
    allow_unused: Sequence[str] = (),
) -> nnx.Module:
    """Fill an abstract model (from `nnx.eval_shape`) from checkpoint tensors, one rule at a time.

    Raises `CheckpointError` naming the tensor for a missing tensor, an unexpected tensor, or a
    shape mismatch (with both shapes). `allow_missing` lists our parameter-path prefixes that may
    stay uninitialised (they keep a fresh init when `abstract_model` is concrete); `allow_unused`
    lists checkpoint names (prefixes) that may be ignored.
    """
    graphdef, state, flat = _flat_abstract(abstract_model)
    available = reader.names()
    used: set[str] = set()
    filled: dict[str, jax.Array] = {}
    for rule in rules:
        missing = [n for n in rule.hf if n not in available]
        if missing:
            raise CheckpointError(
                f"checkpoint is missing tensor {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        arrays = []
        for name, expected in zip(rule.hf, rule.hf_shapes):
            actual = reader.shape(name)
            if actual != tuple(expected):
                raise CheckpointError(
                    f"tensor {name!r} has shape {actual}, the model expects {tuple(expected)}"
                )
            arrays.append(reader.get(name))
        used.update(rule.hf)
        for path, value in zip(rule.ours, rule.to_ours(arrays)):
            if path not in flat:
                raise CheckpointError(f"rule for {rule.hf[0]!r} targets unknown parameter {path!r}")
            var = flat[path]
            target = var.get_value()
            if tuple(value.shape) != tuple(target.shape):
                raise CheckpointError(
                    f"parameter {path!r} (from {rule.hf[0]!r}) has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(target.shape)}"
                )
            out_dtype = dtype or target.dtype
            sharding = None
            if mesh is not None:
                names = var.get_metadata().get("out_sharding")
                spec = (
                    logical_to_spec(names, axis_rules, mesh, target.shape)
                    if names
                    else jax.sharding.PartitionSpec()
                )
                sharding = jax.sharding.NamedSharding(mesh, spec)
            filled[path] = jax.device_put(np.ascontiguousarray(value).astype(out_dtype, copy=False), sharding)
    unused = sorted(n for n in available - used if not any(n.startswith(p) for p in allow_unused))
    if unused:
        raise CheckpointError(
            f"unexpected tensor {unused[0]!r} in checkpoint"
            + (f" (and {len(unused) - 1} more)" if len(unused) > 1 else "")
        )
    not_filled = sorted(
        p for p in flat if p not in filled and not any(p.startswith(a) for a in allow_missing)
    )
    if not_filled:
        raise CheckpointError(
            f"checkpoint has no tensor for parameter {not_filled[0]!r}"
            + (f" (and {len(not_filled) - 1} more)" if len(not_filled) > 1 else "")
        )
    for path, var in flat.items():
        if path in filled:
            var.set_value(filled[path])
    return nnx.merge(graphdef, state) if graphdef is not None else state


def export_tensors(model: nnx.Module, rules: Iterable[Rule]) -> Iterable[tuple[str, np.ndarray]]:
    """(checkpoint name, array) pairs for every rule, produced one rule at a time."""
    _, _, flat = _flat_abstract(model)
    for rule in rules:
        ours = [np.asarray(jax.device_get(flat[p].get_value())) for p in rule.ours]
        for name, array in zip(rule.hf, rule.to_hf(ours)):
            yield name, np.ascontiguousarray(array)


def write_safetensors(
    tensors: Iterable[tuple[str, np.ndarray]], out_dir: Path, max_shard_bytes: int = 5 * 2**30
) -> list[Path]:
    """Write tensors into `model.safetensors`, or shards + `model.safetensors.index.json` when the
    total exceeds `max_shard_bytes` (one shard in memory at a time)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    files: list[Path] = []
    weight_map: dict[str, int] = {}
    size = 0
    total = 0

    def flush(index: int) -> None:
        tmp = out_dir / f"shard-{index:05d}.tmp"
        save_file(shards[-1], str(tmp), metadata={"format": "pt"})
        files.append(tmp)

    for name, array in tensors:
        if size and size + array.nbytes > max_shard_bytes:
            flush(len(files))
            shards[-1] = {}
            size = 0
        shards[-1][name] = array
        weight_map[name] = len(files)
        size += array.nbytes
        total += array.nbytes
    flush(len(files))
    if len(files) == 1:
        final = [out_dir / SAFETENSORS]
        os.replace(files[0], final[0])
        return final
    n = len(files)
    final = [out_dir / f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for tmp, dst in zip(files, final):
        os.replace(tmp, dst)
    index = {
        "metadata": {"total_size": total},
        "weight_map": {k: final[i].name for k, i in sorted(weight_map.items())},
    }
    (out_dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
    return final


# --------------------------------------------------------------------------------------------------
# Public API


def resolve_checkpoint_dir(path_or_hub_id: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id fetched with huggingface_hub (clear error offline)."""
    path = Path(path_or_hub_id)
    if path.exists():
        return path
    text = str(path_or_hub_id)
    if text.count("/") != 1 or text.startswith((".", "/")):
        raise FileNotFoundError(f"checkpoint folder {text!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, no credentials ...
        raise FileNotFoundError(
            f"{text!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}: {e}). Download it elsewhere and pass the folder path."
        ) from e


def abstract_model(config: MolmoConfig) -> Molmo:
    """The model with shapes only (no memory), ready to be filled by a loader."""
    return nnx.eval_shape(lambda: Molmo(config, rngs=nnx.Rngs(0)))


def load_pretrained(
    path_or_hub_id: str | os.PathLike,
    dtype=jnp.float32,
    *,
    mesh: jax.sharding.Mesh | None = None,
    axis_rules=DEFAULT_RULES,
    config: MolmoConfig | None = None,
) -> Molmo:
    """Load a released Molmo checkpoint folder (HF layout) or hub id into a `Molmo` model.

    `dtype` sets the parameter dtype and the compute dtype. With `mesh`, parameters are placed
    sharded by their logical axes as they are read.
    """
    folder = resolve_checkpoint_dir(path_or_hub_id)
    config_file = folder / "config.json"
    if config is None:
        if not config_file.exists():
            raise FileNotFoundError(f"{folder} has no config.json")
        config = from_hf_config(config_file)
    name = jnp.dtype(dtype).name
    config = config.replace(dtype=name, param_dtype=name)
    reader = TensorReader.from_dir(folder)
    layout = detect_molmo_layout(reader.names())
    model = abstract_model(config)
    return load_tensors(
        model, reader, molmo_rules(config, layout), dtype=dtype, mesh=mesh, axis_rules=axis_rules
    )


def save_pretrained(
    model: Molmo, path: str | os.PathLike, *, layout: str = "molmo", max_shard_bytes: int = 5 * 2**30
) -> Path:
    """Write `config.json` and the weights in the released Molmo naming."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    hf_config = to_hf_config(config)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    write_safetensors(export_tensors(model, molmo_rules(config, layout)), out, max_shard_bytes)
    return out
