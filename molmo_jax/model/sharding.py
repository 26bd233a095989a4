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


def make_mesh(shape: dict[str, int], devices=None) -> Mesh:
    """A mesh over the MESH_AXES; one axis may be -1 (takes the remaining devices)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; the axes are {MESH_AXES}")
    auto = [a for a, s in sizes.items() if s == -1]
    if len(auto) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {auto}")
    fixed = 1
    for s in sizes.values():
        if s != -1:
            fixed *= s
    if auto:
        if len(devices) % fixed:
            raise ValueError(f"{len(devices)} devices do not divide by the fixed mesh axes {sizes}")
        sizes[auto[0]] = len(devices) // fixed
    total = 1
    for s in sizes.values():
        total *= s
    if total > len(devices):
        raise ValueError(f"mesh {sizes} needs {total} devices, {len(devices)} available")
    devices = devices[:total]  # a fixed mesh smaller than the machine uses the first devices
    import numpy as np

    grid = np.asarray(devices).reshape(tuple(sizes[a] for a in MESH_AXES))
    return Mesh(grid, MESH_AXES)
