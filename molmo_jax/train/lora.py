"""LoRA fine-tuning without touching the model modules.

Adapters live in their own pytree, `{param_path: {"a": [in, r], "b": [r, out]}}`, next to the
(frozen) base parameters from `nnx.split(model, nnx.Param)`. Inside the step the effective weight
of every selected parameter is `W + (alpha / r) * (A @ B).reshape(W.shape)` and the model is
rebuilt with `nnx.merge`, so any parameter shape works: the leading `in_axes` axes of W are the
input (1 everywhere except the LLM's attention output `o [heads, hd, d]`, whose input is
`heads * hd`) and the remaining axes, flattened, the output. Only the adapters are
differentiated and given to the optimizer; the base can be cast to bfloat16.

Targets are regular expressions matched (`re.fullmatch`) against parameter paths such as
`llm.blocks.3.attn.q` or `vision.blocks.0.attention.wq.kernel`; a Dense's trailing `.kernel` may be
left out of the pattern. Only parameters with at least two dimensions are adaptable (biases and
norms never are); a pattern selecting nothing raises `LoRAError` naming it.

Dropout: with merged weights a per-token input dropout is impossible; `dropout` instead drops
input features of the LoRA branch (rows of A, rescaled by 1 / (1 - p)), one mask per step shared by
the batch.

Adapter checkpoints: `adapter_model.safetensors` (`<path>.lora_a`, `<path>.lora_b`) and
`adapter_config.json` (the `LoRAConfig`). `merge_lora` folds them into a model, which
`save_pretrained` then exports in the released layout (`python -m molmo_jax.cli.merge_lora`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from safetensors.numpy import load_file, save_file

from molmo_jax.model.sharding import use_mesh_rules
from molmo_jax.train.optimizer import clip_by_group_norm, schedule
from molmo_jax.train.step import StepSettings, microbatch_loss

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# Attention in the released Molmo models, LLM MLP, ViT attention + MLP, connector.
DEFAULT_TARGETS = (
    r"llm\.blocks\.\d+\.attn\.(q|k|v|o)",
    r"llm\.blocks\.\d+\.mlp\.(gate|up|down)",
)
ALL_LINEAR_TARGETS = DEFAULT_TARGETS + (
    r"vision\.blocks\.\d+\.attention\.w[qkvo]",
    r"vision\.blocks\.\d+\.mlp\.w[12]",
    r"connector\.image_pooling_2d\.w[qkvo]",
    r"connector\.image_projector\.w[123]",
)
# Parameters whose input spans more than the first axis.
IN_AXES = ((r"(.*\.)?attn\.o", 2),)
# Stacked expert weights (OLMoE `mlp.gate/up/down [experts, in, out]`): one adapter per expert.
EXPERT_AXES = ((r"llm\.blocks\.\d+\.mlp\.(gate|up|down)", 3),)  # (pattern, ndim that means stacked)

Adapters = dict[str, dict[str, jax.Array]]


class LoRAError(ValueError):
    """A LoRA configuration does not fit the model (names the pattern or parameter)."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    init_std: float | None = None  # A ~ N(0, std^2); None: 1 / sqrt(in)

    def __post_init__(self):
        if self.rank < 1:
            raise LoRAError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoRAError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "targets", tuple(self.targets))
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as e:
                raise LoRAError(f"LoRA target pattern {pattern!r} is not a valid regex: {e}") from e

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"targets": list(self.targets), "format": "molmo_jax_lora"}

    @classmethod
    def from_json(cls, data: Mapping) -> LoRAConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def _flat(params: nnx.State) -> dict[str, nnx.Variable]:
    return {".".join(map(str, p)): v for p, v in nnx.to_flat_state(params)}


def _value(v):
    return v.get_value() if hasattr(v, "get_value") else v


def in_axes_of(path: str) -> int:
    for pattern, n in IN_AXES:
        if re.fullmatch(pattern, path):
            return n
    return 1


def _matches(pattern: str, path: str) -> bool:
    if re.fullmatch(pattern, path):
        return True
    return path.endswith(".kernel") and re.fullmatch(pattern, path[: -len(".kernel")]) is not None


def experts_of(path: str, shape: Sequence[int]) -> int:
    """Number of stacked experts of a weight (0 for an ordinary weight)."""
    for pattern, ndim in EXPERT_AXES:
        if len(shape) == ndim and re.fullmatch(pattern, path):
            return int(shape[0])
    return 0


def select_targets(params: nnx.State, config: LoRAConfig) -> dict[str, tuple[int, int, int]]:
    """`{path: (in, out, experts)}` of the weights the config adapts (experts 0: not stacked);
    raises on a pattern matching none."""
    flat = {p: tuple(_value(v).shape) for p, v in _flat(params).items()}
    selected: dict[str, tuple[int, int]] = {}
    for pattern in config.targets:
        hits = [p for p, s in flat.items() if len(s) >= 2 and _matches(pattern, p)]
        if not hits:
            near = [p for p in flat if _matches(pattern, p)]
            why = f" (only parameters with < 2 dims: {near[:3]})" if near else ""
            raise LoRAError(f"LoRA target pattern '{pattern}' matches no weight of the model{why}")
        for p in hits:
            shape = flat[p]
            e = experts_of(p, shape)
            if e:
                selected[p] = (shape[1], math.prod(shape[2:]), e)
            else:
                n = in_axes_of(p)
                selected[p] = (math.prod(shape[:n]), math.prod(shape[n:]), 0)
    return dict(sorted(selected.items()))


def expected_num_params(params: nnx.State, config: LoRAConfig) -> int:
    """sum over the selected weights (each expert of a stacked weight counting once) of r * (in + out)."""
    return sum(config.rank * (i + o) * max(e, 1) for i, o, e in select_targets(params, config).values())


def count_params(adapters: Adapters) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(adapters))


def init_adapters(params: nnx.State, config: LoRAConfig, rng: jax.Array, dtype=jnp.float32) -> Adapters:
    """A ~ N(0, init_std^2) [in, r], B = 0 [r, out]: the adapted model starts equal to the base."""
    adapters = {}
    for k, (path, (n_in, n_out, e)) in enumerate(select_targets(params, config).items()):
        std = config.init_std if config.init_std is not None else 1.0 / math.sqrt(n_in)
        lead = (e,) if e else ()
        a = std * jax.random.normal(jax.random.fold_in(rng, k), (*lead, n_in, config.rank), jnp.float32)
        adapters[path] = {"a": a.astype(dtype), "b": jnp.zeros((*lead, config.rank, n_out), dtype)}
    return adapters


def abstract_adapters(params: nnx.State, config: LoRAConfig, dtype=jnp.float32) -> Adapters:
    return jax.eval_shape(lambda: init_adapters(params, config, jax.random.key(0), dtype))


def delta(
    shape: Sequence[int], adapter: Mapping[str, jax.Array], config: LoRAConfig, mask=None, dtype=None
) -> jax.Array:
    """scale * A @ B reshaped to the weight's shape (A's rows multiplied by `mask` if given).

    With `dtype` (the base weight's, e.g. bfloat16) A and B are cast first, so neither the delta
    nor the weight-sized gradient flowing back into it is ever materialised in float32.
    """
    a = adapter["a"] if mask is None else adapter["a"] * mask[:, None].astype(adapter["a"].dtype)
    b = adapter["b"]
    if dtype is not None:
        a, b = a.astype(dtype), b.astype(dtype)
    return (jnp.asarray(config.scale, a.dtype) * (a @ b)).reshape(tuple(shape))  # batched over experts


def apply_adapters(
    params: nnx.State, adapters: Adapters, config: LoRAConfig, *, rng: jax.Array | None = None
) -> nnx.State:
    """A copy of `params` with every adapted weight replaced by W + scale * A @ B (W's dtype).

    With `rng` and `config.dropout > 0`, input features of each LoRA branch are dropped.
    """
    flat = list(nnx.to_flat_state(params))
    known = {".".join(map(str, p)) for p, _ in flat}
    missing = sorted(set(adapters) - known)
    if missing:
        raise LoRAError(f"adapter for {missing[0]!r} has no parameter in the model")
    out = []
    for k, (path, var) in enumerate(flat):
        name = ".".join(map(str, path))
        if name in adapters:
            w = _value(var)
            mask = None
            if rng is not None and config.dropout > 0:
                n_in = adapters[name]["a"].shape[-2]
                keep = jax.random.bernoulli(jax.random.fold_in(rng, k), 1.0 - config.dropout, (n_in,))
                mask = keep / (1.0 - config.dropout)
            new = (w + delta(w.shape, adapters[name], config, mask, dtype=w.dtype)).astype(w.dtype)
            var = var.replace(new) if hasattr(var, "replace") else new
        out.append((path, var))
    return nnx.from_flat_state(out)


def cast_base(params: nnx.State, dtype) -> nnx.State:
    """The frozen base in another dtype (e.g. bfloat16) for LoRA training."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def merge_lora(model: nnx.Module, adapters: Adapters, config: LoRAConfig) -> nnx.Module:
    """Fold the adapters into the model's weights in place (and return it)."""
    _, params, _ = nnx.split(model, nnx.Param, ...)
    nnx.update(model, apply_adapters(params, adapters, config))
    return model


def build_lora_optimizer(
    peak_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    *,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    final_lr_fraction: float = 0.1,
) -> optax.GradientTransformation:
    """AdamW over the adapter tree with the original's schedule and global-norm clipping."""
    chain = [] if max_grad_norm is None else [clip_by_group_norm(max_grad_norm)]
    chain.append(
        optax.adamw(
            schedule(peak_lr, warmup_steps, total_steps, final_lr_fraction),
            b1=b1,
            b2=b2,
            eps=eps,
            weight_decay=weight_decay,
        )
    )
    return optax.chain(*chain)


def make_lora_train_step(
    graphdef, tx: optax.GradientTransformation, settings: StepSettings, config: LoRAConfig, mesh=None
) -> Callable:
    """`step(adapters, opt_state, base, batch, rng=None) -> (adapters, opt_state, metrics)`.

    `base` (the frozen `nnx.Param` state) is an input and never an output: jit with the adapters
    and optimizer state donated; the base stays bitwise unchanged. `rng` drives LoRA dropout.
    """

    def loss_fn(adapters, base, batch, normalizer, rng):
        params = apply_adapters(base, adapters, config, rng=rng)
        return microbatch_loss(graphdef, params, batch, settings, normalizer)

    def step(adapters, opt_state, base, batch, rng=None):
        with use_mesh_rules(mesh) if mesh is not None else contextlib.nullcontext():
            w = jnp.maximum(batch["loss_masks"].astype(jnp.float32), 0.0)
            normalizer = jnp.maximum(jnp.sum(w), 1e-6)
            grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
            n = settings.grad_accum_steps
            if n == 1:
                (loss, metrics), grads = grad_fn(adapters, base, batch, normalizer, rng)
            else:
                micro = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)
                keys = None if rng is None else jax.random.split(rng, n)

                def body(carry, xs):
                    grads_acc, loss_acc, metrics_acc = carry
                    mb, key = xs
                    (loss, m), g = grad_fn(adapters, base, mb, normalizer, key)
                    return (
                        jax.tree.map(jnp.add, grads_acc, g),
                        loss_acc + loss,
                        jax.tree.map(jnp.add, metrics_acc, m),
                    ), None

                init_m = {"cross_entropy": 0.0, "z_loss": 0.0, "tokens": 0, "loss_tokens_dropped": 0}
                init_m = jax.tree.map(
                    lambda v: jnp.asarray(v, jnp.int32 if isinstance(v, int) else jnp.float32), init_m
                )
                zeros = jax.tree.map(jnp.zeros_like, adapters)
                (grads, loss, metrics), _ = jax.lax.scan(
                    body, (zeros, jnp.float32(0.0), init_m), (micro, keys)
                )
            metrics = dict(metrics, loss=loss, **{"grad_norm/lora": optax.tree.norm(grads)})
            updates, opt_state = tx.update(grads, opt_state, adapters)
            adapters = optax.apply_updates(adapters, updates)
            return adapters, opt_state, metrics

    return step


def replicated_shardings(tree, mesh: jax.sharding.Mesh):
    """Adapters (and their optimizer state) are small: replicate them over the mesh; the base keeps
    its logical-axis shardings (`molmo_jax.model.sharding.state_shardings`)."""
    return jax.tree.map(lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), tree)


def save_adapters(adapters: Adapters, config: LoRAConfig, path: str | Path) -> Path:
    """Write `adapter_model.safetensors` + `adapter_config.json` (adapters only: small)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, ab in adapters.items():
        tensors[f"{name}.lora_a"] = np.ascontiguousarray(np.asarray(jax.device_get(ab["a"])))
        tensors[f"{name}.lora_b"] = np.ascontiguousarray(np.asarray(jax.device_get(ab["b"])))
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "molmo_jax_lora"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config.to_json(), indent=2))
    return out


def load_adapters(path: str | Path, params: nnx.State | None = None) -> tuple[Adapters, LoRAConfig]:
    """Read adapters saved by `save_adapters`; with `params`, check they fit those weights."""
    folder = Path(path)
    for f in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (folder / f).exists():
            raise FileNotFoundError(f"{folder} has no {f}")
    config = LoRAConfig.from_json(json.loads((folder / ADAPTER_CONFIG).read_text()))
    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    adapters: Adapters = {}
    for key, value in tensors.items():
        name, _, part = key.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            raise LoRAError(f"unexpected tensor {key!r} in {folder / ADAPTER_WEIGHTS}")
        adapters.setdefault(name, {})[part[-1]] = jnp.asarray(value)
    for name, ab in adapters.items():
        if set(ab) != {"a", "b"}:
            raise LoRAError(f"adapter {name!r} lacks lora_a or lora_b")
    if params is not None:
        shapes = select_targets(params, config)
        for name, ab in adapters.items():
            if name not in shapes:
                raise LoRAError(f"adapter for {name!r} is not a target of the model")
            n_in, n_out, e = shapes[name]
            lead = (e,) if e else ()
            want = (*lead, n_in, config.rank), (*lead, config.rank, n_out)
            got = tuple(ab["a"].shape), tuple(ab["b"].shape)
            if got != want:
                raise LoRAError(f"adapter {name!r} has shapes {got}, the model expects {want}")
    return adapters, config


def load_with_adapters(base: str | Path, adapters_dir: str | Path, *, merge: bool = True, **kw):
    """A base checkpoint (`load_pretrained`) with adapters loaded; merged into it by default.

    Returns `(model, adapters, config)`; with `merge=False` the model is the base, ready for
    `apply_adapters` or further LoRA training.
    """
    from molmo_jax.checkpoints.hf import load_pretrained

    model = load_pretrained(base, **kw)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    adapters, config = load_adapters(adapters_dir, params)
    if merge:
        merge_lora(model, adapters, config)
    return model, adapters, config


__all__ = [
    "ALL_LINEAR_TARGETS",
    "DEFAULT_TARGETS",
    "LoRAConfig",
    "LoRAError",
    "abstract_adapters",
    "apply_adapters",
    "build_lora_optimizer",
    "cast_base",
    "count_params",
    "expected_num_params",
    "init_adapters",
    "load_adapters",
    "load_with_adapters",
    "make_lora_train_step",
    "merge_lora",
    "replicated_shardings",
    "save_adapters",
    "select_targets",
]
