"""The trainer, read top to bottom: mesh, processor, shapes, shardings, init-or-restore, data,
compiled step with donated state, loop with metrics, checkpoints and the final export."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from molmo_jax.checkpoints.hf import load_pretrained, save_pretrained
from molmo_jax.model.config import ConfigError, from_hf_config, get_preset
from molmo_jax.model.molmo import Molmo, count_params
from molmo_jax.model.sharding import logical_to_spec, make_mesh, state_shardings
from molmo_jax.train.checkpointing import Checkpointer
from molmo_jax.train.config import validate
from molmo_jax.train.optimizer import GroupSettings, OptimizerSettings, build_optimizer, current_lrs
from molmo_jax.train.step import StepSettings, check_batch, make_train_step

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A metric became NaN or Inf; the last good checkpoint is kept."""


# Stage 1 trains on captions without the chat template, with a "style length:" prefix (MOLMO_SPEC §8.2).
STAGE1_FORMAT = dict(
    prompt_type="none",
    message_formatting="none",
    system_prompt_kind="style_and_length",
    multi_annotation_weighting=None,
)


def build_processor(c: ml_collections.ConfigDict):
    from molmo_jax.preprocess.formatting import FormatterConfig
    from molmo_jax.preprocess.image import ImagePreprocessConfig
    from molmo_jax.preprocess.processor import MolmoProcessor
    from molmo_jax.preprocess.tokenizer import MolmoTokenizer

    source = c.model.tokenizer or c.model.checkpoint
    if not source:
        raise ValueError("config.model.tokenizer is required when there is no model.checkpoint")
    preset = get_preset(c.model.preset)
    pad_to = None if c.model.vocab_from_tokenizer else preset.llm.vocab_size
    if c.model.checkpoint and not c.model.tokenizer:  # the checkpoint's own tokenizer files and ids
        cfg = json.loads((Path(c.model.checkpoint) / "config.json").read_text())
        tokenizer = MolmoTokenizer.from_pretrained(c.model.checkpoint, pad_to=cfg.get("vocab_size"))
    else:
        tokenizer = MolmoTokenizer.from_pretrained(source, pad_to=pad_to)
    vision = (
        preset.vision
        if c.model.init == "scratch"
        else from_hf_config(Path(c.model.checkpoint) / "config.json").vision
    )
    image = ImagePreprocessConfig(
        max_crops=c.data.max_crops,
        crop_size=c.data.crop_size,
        patch_size=vision.patch_size,
        overlap_margins=tuple(c.data.overlap_margins),
        normalize={"clip": "openai", "dinov2": "dino"}.get(vision.kind, vision.kind),
        resize=vision.resize_mode,
    )
    text = FormatterConfig(**STAGE1_FORMAT) if c.stage == "stage1" else FormatterConfig()
    return MolmoProcessor(tokenizer, image, text, max_sequence_length=None)


def build_model_config(c: ml_collections.ConfigDict, processor):
    """The preset's model, or the checkpoint's own config when starting from one."""
    if c.model.init == "scratch":
        cfg = with_weight_init(get_preset(c.model.preset), c.model.get("weight_init", ""))
    else:
        cfg = from_hf_config(Path(c.model.checkpoint) / "config.json")
    cfg = with_training_settings(cfg, c)
    if c.model.vocab_from_tokenizer and c.model.init == "scratch":
        base = processor.tokenizer.image_start_id  # the image tokens follow the text vocabulary
        size = int(math.ceil(base / 128) * 128)
        cfg = cfg.replace(llm=dataclasses.replace(cfg.llm, vocab_size=base, embedding_size=size))
    return cfg


def with_weight_init(cfg, mode: str):
    """The preset with every tower's random init set to `mode` ("" keeps the preset's own)."""
    if not mode:
        return cfg
    return cfg.replace(
        vision=dataclasses.replace(cfg.vision, init=mode),
        connector=dataclasses.replace(cfg.connector, init=mode),
        llm=dataclasses.replace(cfg.llm, init=mode),
    )


def with_training_settings(cfg, c: ml_collections.ConfigDict):
    """The model config with the experiment's dtypes, crop grouping, remat and residual dropout."""
    return cfg.replace(
        dtype=c.model.dtype,
        param_dtype=c.model.param_dtype,
        crop_chunk=c.model.crop_chunk,
        remat=tuple(c.model.remat),
        llm=dataclasses.replace(
            cfg.llm,
            residual_dropout=float(c.train.residual_dropout),
            response_residual_dropout=float(c.train.response_residual_dropout),
        ),
    )


def adamw_settings(c: ml_collections.ConfigDict) -> dict:
    """The AdamW / clipping / schedule-floor values of `config.optimizer` shared by every optimizer."""
    o = c.optimizer
    keys = ("b1", "b2", "eps", "weight_decay", "max_grad_norm", "final_lr_fraction")
    return {k: o[k] for k in keys}


def frozen_prefixes(c: ml_collections.ConfigDict) -> tuple[str, ...]:
    return tuple(c.optimizer.get("frozen", ("llm.embedding",)))


def optimizer_settings(c: ml_collections.ConfigDict) -> OptimizerSettings:
    o = c.optimizer
    groups = {g: GroupSettings(float(o.lr[g]), int(o.warmup[g])) for g in ("connector", "vit", "llm")}
    return OptimizerSettings(
        groups=groups, total_steps=int(c.train.steps), frozen=frozen_prefixes(c), **adamw_settings(c)
    )


def init_params(c, model_cfg, mesh, abstract_params):
    """Parameters born sharded: fresh init inside a jit with output shardings, or a streamed load."""
    shardings = state_shardings(abstract_params, mesh)
    if c.model.init == "scratch":
        init = jax.jit(
            lambda: nnx.split(Molmo(model_cfg, rngs=nnx.Rngs(c.seed)), nnx.Param)[1], out_shardings=shardings
        )
        return init()
    model = load_pretrained(c.model.checkpoint, jnp.dtype(model_cfg.param_dtype), mesh=mesh, config=model_cfg)
    return nnx.split(model, nnx.Param)[1]


def jitted_step(c: ml_collections.ConfigDict, graphdef, tx, abstract_params, mesh):
    """The jitted, donating train step and the shardings of parameters and optimizer state."""
    param_sh = state_shardings(abstract_params, mesh)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    replicated = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), abstract_opt)
    opt_sh = _shard_like_params(abstract_opt, abstract_params, param_sh, replicated)
    settings = StepSettings(
        z_loss_weight=c.train.z_loss_weight,
        grad_accum_steps=c.train.grad_accum_steps,
        loss_budget=c.train.loss_budget or None,
        seed=int(c.seed),
        frozen=frozen_prefixes(c),
        moe_load_balance_weight=float(c.train.moe_load_balance_weight),
        moe_router_z_weight=float(c.train.moe_router_z_weight),
    )
    step = jax.jit(
        make_train_step(graphdef, tx, settings, mesh),
        out_shardings=(param_sh, opt_sh, None),
        donate_argnums=(0, 1),
    )
    return step, param_sh, opt_sh, abstract_opt


def lora_config(c: ml_collections.ConfigDict):
    """`c.lora` as a `LoRAConfig` (the named target sets expanded)."""
    from molmo_jax.train import lora

    sets = {"default": lora.DEFAULT_TARGETS, "all_linear": lora.ALL_LINEAR_TARGETS}
    targets = [t for name in c.lora.targets for t in sets.get(name, (name,))]
    return lora.LoRAConfig(
        rank=int(c.lora.rank),
        alpha=float(c.lora.alpha),
        dropout=float(c.lora.dropout),
        targets=tuple(dict.fromkeys(targets)),
    )


def jitted_lora_step(c: ml_collections.ConfigDict, graphdef, abstract_base, mesh, lcfg):
    """The jitted LoRA step (adapters and their optimizer state donated, the frozen base an input)
    with the abstract adapters / optimizer state and the shardings of adapters, optimizer, base."""
    from molmo_jax.train import lora

    tx = lora.build_lora_optimizer(
        float(c.lora.lr), int(c.train.steps), int(c.lora.warmup), **adamw_settings(c)
    )
    abstract_ad = lora.abstract_adapters(abstract_base, lcfg)
    abstract_opt = jax.eval_shape(tx.init, abstract_ad)
    ad_sh = lora.replicated_shardings(abstract_ad, mesh)
    opt_sh = lora.replicated_shardings(abstract_opt, mesh)
    base_sh = state_shardings(abstract_base, mesh)
    settings = StepSettings(
        z_loss_weight=c.train.z_loss_weight,
        grad_accum_steps=c.train.grad_accum_steps,
        loss_budget=c.train.loss_budget or None,
        moe_load_balance_weight=float(c.train.get("moe_load_balance_weight", 0.0)),
        moe_router_z_weight=float(c.train.get("moe_router_z_weight", 0.0)),
    )
    step = jax.jit(
        lora.make_lora_train_step(graphdef, tx, settings, lcfg, mesh),
        out_shardings=(ad_sh, opt_sh, None),
        donate_argnums=(0, 1),
    )
    return step, tx, (abstract_ad, ad_sh), (abstract_opt, opt_sh), base_sh


def pipeline_tasks(c: ml_collections.ConfigDict) -> list[str] | dict[str, float]:
    """`data.tasks` as the pipeline takes them: with `data.task_weights`, task -> weight; otherwise
    the list (a mixture then samples at the recipe's rates)."""
    weights = dict(c.data.get("task_weights") or {})
    return {t: float(weights[t]) for t in c.data.tasks} if weights else list(c.data.tasks)


def mesh_from_config(c: ml_collections.ConfigDict):
    """`config.mesh`: per-slice (ICI) degrees of the axes, and `config.mesh.dcn` across slices."""
    ici = {k: v for k, v in c.mesh.items() if k != "dcn"}
    dcn = dict(c.mesh.get("dcn") or {})
    return make_mesh(ici, dcn=dcn if any(v != 1 for v in dcn.values()) else None)


def check_batch_divides_mesh(c: ml_collections.ConfigDict, mesh) -> None:
    dp = mesh.shape["data"] * mesh.shape["fsdp"] * mesh.shape["expert"]
    if c.data.batch_size % dp:
        raise ConfigError(
            f"config.data.batch_size={c.data.batch_size} is not divisible by the {dp} "
            f"data-parallel devices of config.mesh={dict(mesh.shape)}"
        )


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(("batch",), mesh=mesh))


def to_global(batch: dict, mesh) -> dict:
    """This process's slice of the global batch -> global arrays sharded over the batch axes."""
    spec = batch_sharding(mesh).spec

    def one(x):
        x = np.asarray(x)
        sharding = NamedSharding(mesh, PartitionSpec(*spec, *([None] * (x.ndim - 1))))
        return jax.make_array_from_process_local_data(sharding, x)

    return {k: one(v) for k, v in batch.items()}


class MetricWriter:
    """TensorBoard event files plus a console progress line."""

    def __init__(self, logdir: Path):
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(logdir)) if jax.process_index() == 0 else None

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(c: ml_collections.ConfigDict, workdir: str | Path, *, stop_after: int | None = None) -> dict:
    """Train until `config.train.steps` (or `stop_after` steps of this run); resumes from `workdir`."""
    from molmo_jax.data.pipeline import PipelineConfig, build_pipeline

    validate(c)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))
    mesh = mesh_from_config(c)

    processor = build_processor(c)
    model_cfg = build_model_config(c, processor)
    lcfg = lora_config(c) if c.lora.enabled else None
    if lcfg is not None:  # the frozen base is held in lora.base_dtype
        model_cfg = model_cfg.replace(param_dtype=c.lora.base_dtype)
    graphdef, abstract_params = nnx.split(
        nnx.eval_shape(lambda: Molmo(model_cfg, rngs=nnx.Rngs(0))), nnx.Param
    )
    if lcfg is None:
        tx = build_optimizer(optimizer_settings(c), abstract_params)
        step_fn, param_sh, opt_sh, abstract_opt = jitted_step(c, graphdef, tx, abstract_params, mesh)
        state_key, abstract_trainable = "params", abstract_params
    else:  # `params` below are the adapters; `base` stays frozen
        from molmo_jax.train import lora

        lora_step, tx, (abstract_trainable, param_sh), (abstract_opt, opt_sh), _ = jitted_lora_step(
            c, graphdef, abstract_params, mesh, lcfg
        )
        state_key = "adapters"
        dropout_key = jax.random.key(c.seed + 1)

        def step_fn(adapters, opt_state, batch, step_index):  # the full step's signature
            rng = jax.random.fold_in(dropout_key, step_index) if lcfg.dropout > 0 else None
            return lora_step(adapters, opt_state, base, batch, rng)

    check_batch_divides_mesh(c, mesh)
    n_proc = jax.process_count()
    if c.data.batch_size % n_proc:
        raise ValueError(f"config.data.batch_size={c.data.batch_size} is not divisible by {n_proc} processes")
    pipe = build_pipeline(
        pipeline_tasks(c),
        processor,
        PipelineConfig(
            batch_size=c.data.batch_size // n_proc,
            sequence_length=c.data.sequence_length,
            max_crops=c.data.max_crops + 1,
            seed=c.seed,
            num_workers=c.data.num_workers,
            max_conversations=c.data.max_conversations or None,
            on_bad_record=c.data.on_bad_record,
        ),
        data_dir=c.data.data_dir,
    )
    data = iter(pipe)

    ckpt = Checkpointer(
        workdir / "checkpoints",
        save_interval_steps=c.train.checkpoint_every,
        keep_last=c.train.keep_checkpoints,
    )
    start = ckpt.latest_step()
    if lcfg is not None:
        base = init_params(c, model_cfg, mesh, abstract_params)
    if start is not None:
        abstract = {
            state_key: _with_shardings(abstract_trainable, param_sh),
            "opt_state": _with_shardings(abstract_opt, opt_sh),
        }
        start, state, _ = ckpt.restore(start, abstract, data_iterator=data)
        params, opt_state = state[state_key], state["opt_state"]
        log.info("resumed from step %d", start)
    elif lcfg is None:
        start = 0
        params = init_params(c, model_cfg, mesh, abstract_params)
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    else:
        start = 0
        params = jax.jit(
            lambda: lora.init_adapters(abstract_params, lcfg, jax.random.key(c.seed)), out_shardings=param_sh
        )()
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)

    writer = MetricWriter(workdir / "tensorboard")
    opt_settings = optimizer_settings(c)
    if lcfg is None:
        trainable = ""
    else:
        opt_settings = dataclasses.replace(
            opt_settings, groups={"lora": GroupSettings(float(c.lora.lr), int(c.lora.warmup))}
        )
        trainable = f", LoRA rank {lcfg.rank}: {lora.count_params(abstract_trainable) / 1e6:.2f} M trainable"
    total = c.train.steps
    end = total if stop_after is None else min(total, start + stop_after)
    history: list[dict] = []
    t_start, t_last, examples = time.perf_counter(), time.perf_counter(), 0
    print(
        f"training {c.model.preset} ({count_params(abstract_params) / 1e6:.1f} M parameters{trainable}) "
        f"steps {start}..{end} on mesh {dict(mesh.shape)}",
        flush=True,
    )
    for step in range(start, end):
        batch = next(data)
        if step == start:
            check_batch(batch, c.train.grad_accum_steps)
        params, opt_state, metrics = step_fn(params, opt_state, to_global(batch, mesh), np.int32(step))
        examples += c.data.batch_size
        done = step + 1
        if done % c.train.log_every == 0 or done == end:
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:
                ckpt.wait()
                raise NonFiniteError(
                    f"step {done}: {bad[0]} = {values[bad[0]]}; last good checkpoint kept "
                    f"(step {ckpt.latest_step()})"
                )
            now = time.perf_counter()
            values.update({k: float(v) for k, v in current_lrs(opt_settings, jnp.asarray(step)).items()})
            values["examples_per_s"] = examples / (now - t_last)
            values["step_s"] = (now - t_last) / max(
                1, c.train.log_every if done % c.train.log_every == 0 else 1
            )
            examples, t_last = 0, now
            writer.write(done, values)
            history.append({"step": done, **values})
            eta = (now - t_start) / (done - start) * (end - done)
            print(
                f"step {done}/{total}  loss {values['loss']:.4f}  ce {values['cross_entropy']:.4f}  "
                f"{values['examples_per_s']:.1f} ex/s  eta {eta:.0f}s",
                flush=True,
            )
        ckpt.save(
            done,
            {state_key: params, "opt_state": opt_state},
            data_iterator=data,
            metadata={"step": done, "stage": c.stage, "lora": lcfg is not None},
            force=done == end,
        )
    ckpt.wait()
    writer.close()
    summary = {"start_step": start, "end_step": end, "history": history, "workdir": str(workdir)}
    if lcfg is not None and end == total:
        del base
        summary.update(export_lora(c, lcfg, params, processor, workdir))
    elif c.train.export_hf and end == total:
        model = nnx.merge(graphdef, jax.device_get(params))
        out = save_pretrained(model, workdir / "hf")
        processor.save_pretrained(out)  # tokenizer + the crop settings it was trained with
        summary["hf_checkpoint"] = str(out)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    ckpt.close()
    return summary


def export_lora(c: ml_collections.ConfigDict, lcfg, adapters, processor, workdir: Path) -> dict:
    """WORKDIR/adapters (adapter_model.safetensors + adapter_config.json) and, with
    `lora.export_merged`, WORKDIR/hf: the base checkpoint (at model.param_dtype) with the adapters
    folded in, as `python -m molmo_jax.cli.merge_lora` writes it."""
    from molmo_jax.train import lora

    out: dict = {}
    if jax.process_index() != 0:
        return out
    adapters = jax.device_get(adapters)
    out["adapters"] = str(lora.save_adapters(adapters, lcfg, workdir / "adapters"))
    if c.lora.export_merged:
        if not c.model.checkpoint:
            raise ConfigError("config.lora.export_merged needs a base model.checkpoint to merge into")
        model = load_pretrained(c.model.checkpoint, jnp.dtype(c.model.param_dtype))
        lora.merge_lora(model, adapters, lcfg)
        hf = save_pretrained(model, workdir / "hf")
        processor.save_pretrained(hf)
        out["hf_checkpoint"] = str(hf)
    return out


def _with_shardings(tree, shardings):
    """Abstract leaves carrying the shardings to restore onto (both trees list leaves in one order)."""
    shard_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    leaves, treedef = jax.tree.flatten(tree)
    if len(leaves) != len(shard_leaves):
        raise ValueError(f"{len(leaves)} arrays but {len(shard_leaves)} shardings")
    return jax.tree.unflatten(
        treedef, [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(leaves, shard_leaves)]
    )


def _shard_like_params(abstract_opt, abstract_params, param_sh, default_sh):
    """Optimizer moments get their parameter's sharding (matched by shape and position)."""
    param_leaves = jax.tree.leaves(abstract_params)
    sh_leaves = jax.tree.leaves(param_sh, is_leaf=lambda x: isinstance(x, NamedSharding))
    by_shape: dict = {}
    for p, s in zip(param_leaves, sh_leaves):
        by_shape.setdefault((p.shape, p.dtype), s)
    return jax.tree.map(lambda x, d: by_shape.get((x.shape, x.dtype), d), abstract_opt, default_sh)


def abstract_batch(c: ml_collections.ConfigDict, model_cfg, mesh) -> dict:
    """Shapes (with shardings) of one global training batch."""
    vis = model_cfg.vision
    b, t, crops = c.data.batch_size, c.data.sequence_length, c.data.max_crops + 1
    pooled = math.ceil(vis.grid[0] / model_cfg.connector.pool_size[0]) * math.ceil(
        vis.grid[1] / model_cfg.connector.pool_size[1]
    )
    shapes = {
        "input_ids": ((b, t), jnp.int32),
        "target_tokens": ((b, t), jnp.int32),
        "loss_masks": ((b, t), jnp.float32),
        "position_ids": ((b, t), jnp.int32),
        "subsegment_ids": ((b, t), jnp.int32),
        "images": ((b, crops, vis.num_patches, vis.patch_dim), jnp.float32),
        "image_masks": ((b, crops, vis.num_patches), jnp.float32),
        "image_input_idx": ((b, crops, pooled), jnp.int32),
    }
    spec = batch_sharding(mesh).spec
    return {
        k: jax.ShapeDtypeStruct(
            s, d, sharding=NamedSharding(mesh, PartitionSpec(*spec, *([None] * (len(s) - 1))))
        )
        for k, (s, d) in shapes.items()
    }


def dry_run_memory(c: ml_collections.ConfigDict, *, llm_overrides: dict | None = None) -> dict:
    """Compile the train step ahead of time on abstract inputs (no parameters allocated) and report
    XLA's per-device memory for the config's preset, batch and mesh, and the compile seconds.
    `llm_overrides` replaces LLMConfig fields (e.g. `moe_impl`)."""
    validate(c)
    mesh = mesh_from_config(c)
    check_batch_divides_mesh(c, mesh)
    model_cfg = with_training_settings(get_preset(c.model.preset), c)
    if llm_overrides:
        model_cfg = model_cfg.replace(llm=dataclasses.replace(model_cfg.llm, **llm_overrides))
    t_start = time.perf_counter()
    lcfg = lora_config(c) if c.lora.enabled else None
    if lcfg is not None:
        model_cfg = model_cfg.replace(param_dtype=c.lora.base_dtype)
    graphdef, abstract_params = nnx.split(
        nnx.eval_shape(lambda: Molmo(model_cfg, rngs=nnx.Rngs(0))), nnx.Param
    )
    if lcfg is None:
        tx = build_optimizer(optimizer_settings(c), abstract_params)
        step, param_sh, opt_sh, abstract_opt = jitted_step(c, graphdef, tx, abstract_params, mesh)
        compiled = step.lower(
            _with_shardings(abstract_params, param_sh),
            _with_shardings(abstract_opt, opt_sh),
            abstract_batch(c, model_cfg, mesh),
            jax.ShapeDtypeStruct((), jnp.int32),
        ).compile()
    else:
        from molmo_jax.train import lora

        step, _, (abstract_ad, ad_sh), (abstract_opt, opt_sh), base_sh = jitted_lora_step(
            c, graphdef, abstract_params, mesh, lcfg
        )
        rng = jax.eval_shape(lambda: jax.random.key(0)) if lcfg.dropout > 0 else None
        compiled = step.lower(
            _with_shardings(abstract_ad, ad_sh),
            _with_shardings(abstract_opt, opt_sh),
            _with_shardings(abstract_params, base_sh),
            abstract_batch(c, model_cfg, mesh),
            rng,
        ).compile()
    compile_s = time.perf_counter() - t_start
    mem = compiled.memory_analysis()
    report = {
        "preset": c.model.preset,
        "mesh": dict(mesh.shape),
        "devices": int(mesh.size),
        "parameters": count_params(abstract_params),
        "trainable": count_params(abstract_params) if lcfg is None else lora.count_params(abstract_ad),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "compile_s": compile_s,  # tracing, lowering and XLA compilation
    }
    report["peak_bytes_per_device"] = (
        report["argument_bytes"] + report["output_bytes"] + report["temp_bytes"] - report["alias_bytes"]
    )
    return report
