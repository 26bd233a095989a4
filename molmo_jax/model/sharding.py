"""Logical axis names -> mesh axes.

Every parameter carries logical names (`embed`, `mlp`, `q_heads`, ...). One rules table maps them
to the mesh axes `data`, `fsdp`, `tensor`, `expert`; the same model runs on one CPU or a pod by
changing the table or the mesh. Activations are constrained through `shard(x, names)`, which is a
no-op unless a mesh and rules are active (`with use_mesh_rules(mesh, rules): ...`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "expert")

# Default rules: FSDP over the model dimension, tensor parallelism over heads / MLP / vocab,
# experts over `expert`. A logical name may map to several mesh axes (a tuple) or none.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp", "expert")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("experts", "expert"),
    ("expert_mlp", "tensor"),
    ("norm", None),
    ("new_vocab", None),
    ("vit_embed", "fsdp"),
    ("vit_heads", "tensor"),
    ("vit_mlp", "tensor"),
    ("vit_patch", None),
    ("vit_pos", None),
    ("vit_features", "fsdp"),
    ("pad_kinds", None),
    ("crops", None),
)

_state = threading.local()


def logical_to_spec(
    names: Sequence[str | None],
    rules=DEFAULT_RULES,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """PartitionSpec for logical names; mesh axes of size 1 or absent from `mesh` are dropped, and
    with `shape`, so are mesh axes that do not divide the dimension (it stays replicated there)."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in names:
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        if mesh is not None:
            axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
        axes = tuple(a for a in axes if a not in used)  # a mesh axis may shard one dimension only
        if shape is not None and mesh is not None:
            size, kept = shape[len(out)], []
            for a in axes:
                if size % mesh.shape[a] == 0:
                    kept.append(a)
                    size //= mesh.shape[a]
            axes = tuple(kept)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


@contextlib.contextmanager
def use_mesh_rules(mesh: Mesh, rules=DEFAULT_RULES) -> Iterator[None]:
    """Activate `shard` constraints for code traced inside this context."""
    previous = getattr(_state, "active", None)
    _state.active = (mesh, rules)
    try:
        yield
    finally:
        _state.active = previous


def shard(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical names (no-op without an active mesh)."""
    active = getattr(_state, "active", None)
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules, mesh)))


def state_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for every variable of an (abstract) state, from its logical axis names."""

    def one(var):
        names = var.get_metadata().get("out_sharding") if hasattr(var, "get_metadata") else None
        if names is None:
            return NamedSharding(mesh, PartitionSpec())
        shape = getattr(var.get_value(), "shape", None)
        return NamedSharding(mesh, logical_to_spec(names, rules, mesh, shape))

    return jax.tree.map(one, state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def make_mesh(shape: dict[str, int], devices=None, dcn: dict[str, int] | None = None) -> Mesh:
    """A mesh over the MESH_AXES; one axis may be -1 (takes the remaining devices).

    With `dcn` degrees (multi-slice: axes split across slices over the data-centre network), `shape`
    gives the degrees within a slice and each mesh axis has size `shape[a] * dcn[a]`; the devices are
    laid out by `mesh_utils.create_hybrid_device_mesh`, so only the dcn part of an axis crosses
    slices. Slices are the devices' `slice_index` (TPU), else their processes when there are as
    many processes as slices, else (one process, e.g. simulated CPU devices) contiguous groups of
    devices stand in for slices."""
    import numpy as np

    devices = list(devices if devices is not None else jax.devices())
    dcn_sizes = {a: int(v) for a, v in (dcn or {}).items()}
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; the axes are {MESH_AXES}")
    unknown = set(dcn_sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown dcn mesh axes {sorted(unknown)}; the axes are {MESH_AXES}")
    if any(v < 1 for v in dcn_sizes.values()):
        raise ValueError(f"dcn mesh degrees must be >= 1, got {dcn_sizes}")
    dcn_shape = tuple(dcn_sizes.get(a, 1) for a in MESH_AXES)
    n_slices = int(np.prod(dcn_shape))
    if len(devices) % n_slices:
        raise ValueError(f"{len(devices)} devices do not split into {n_slices} slices (dcn {dcn_sizes})")
    ici = _resolve_sizes(shape, len(devices) // n_slices if n_slices > 1 else len(devices))
    ici_shape = tuple(ici[a] for a in MESH_AXES)
    if n_slices == 1:
        total = int(np.prod(ici_shape))
        devices = devices[:total]  # a fixed mesh smaller than the machine uses the first devices
        return Mesh(np.asarray(devices).reshape(ici_shape), MESH_AXES)
    if int(np.prod(ici_shape)) * n_slices != len(devices):
        raise ValueError(
            f"mesh {ici} per slice x dcn {dict(zip(MESH_AXES, dcn_shape))} needs "
            f"{int(np.prod(ici_shape)) * n_slices} devices, {len(devices)} available"
        )
    return Mesh(hybrid_device_grid(ici_shape, dcn_shape, devices), MESH_AXES)


def hybrid_device_grid(ici_shape: tuple[int, ...], dcn_shape: tuple[int, ...], devices: list):
    """Device array of shape ici * dcn (per axis): one ICI block per slice, blocks tiled over dcn."""
    import numpy as np
    from jax.experimental import mesh_utils

    n_slices = int(np.prod(dcn_shape))
    if hasattr(devices[0], "slice_index"):
        return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
    if len({d.process_index for d in devices}) == n_slices:
        return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=True)
    if len({d.process_index for d in devices}) > 1:
        raise ValueError(
            f"the devices have no slice_index and their {len({d.process_index for d in devices})} "
            f"processes do not match the {n_slices} slices of the dcn degrees {dcn_shape}"
        )
    # One process without slice information (simulated devices): contiguous groups act as slices,
    # tiled exactly as create_hybrid_device_mesh tiles real ones.
    per = len(devices) // n_slices
    blocks = [np.asarray(devices[i * per : (i + 1) * per]).reshape(ici_shape) for i in range(n_slices)]
    order = np.arange(n_slices).reshape(dcn_shape)
    tiled = np.vectorize(lambda i: blocks[i], otypes=[object])(order)
    return np.block(tiled.tolist())


def _resolve_sizes(shape: dict[str, int], n_devices: int) -> dict[str, int]:
    """Axis sizes with the one -1 axis (if any) filled from `n_devices`; checks they fit."""
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    auto = [a for a, s in sizes.items() if s == -1]
    if len(auto) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {auto}")
    fixed = 1
    for s in sizes.values():
        if s != -1:
            fixed *= s
    if auto:
        if n_devices % fixed:
            raise ValueError(f"{n_devices} devices do not divide by the fixed mesh axes {sizes}")
        sizes[auto[0]] = n_devices // fixed
    total = 1
    for s in sizes.values():
        total *= s
    if total > n_devices:
        raise ValueError(f"mesh {sizes} needs {total} devices, {n_devices} available")
    return sizes
