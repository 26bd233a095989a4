"""Experiment configs (ml_collections) for training, their validation, and the settings they give.

`base_config(stage, preset)` holds the original recipe (MOLMO_SPEC §8); the files in `configs/`
select a stage and a model preset and override what differs. Configs are locked: an override of
an unknown key fails in absl's flag parsing, and `validate` checks values before anything compiles,
naming the key.
"""

from __future__ import annotations

import re

import ml_collections

from molmo_jax.model.config import PRESETS, WEIGHT_INITS, ConfigError

STAGES = ("stage1", "stage2", "finetune")
# Per-group peak learning rates and warmups of the two stages (MOLMO_SPEC §8.2, §8.3).
RECIPE = {
    "stage1": dict(
        lr=dict(connector=2e-4, vit=6e-6, llm=2e-5),
        warmup=dict(connector=200, vit=2000, llm=2000),
        batch_size=128,
        tasks=["pixmo_cap_transcript"],
        steps=22_500,
    ),
    "stage2": dict(
        lr=dict(connector=5e-6, vit=5e-6, llm=1e-5),
        warmup=dict(connector=200, vit=200, llm=200),
        batch_size=256,
        tasks=["stage2_mixture"],
        steps=30_000,
    ),
    "finetune": dict(
        lr=dict(connector=5e-6, vit=5e-6, llm=1e-5),
        warmup=dict(connector=100, vit=100, llm=100),
        batch_size=32,
        tasks=["my_dataset"],
        steps=2_000,
    ),
}


# Residual dropout on the LLM blocks per stage (MOLMO_SPEC §8.2-8.4): stage 1 drops on the response
# (caption) tokens only, stage 2 on all tokens; fine-tuning follows stage 2.
DROPOUT = {
    "stage1": dict(residual_dropout=0.0, response_residual_dropout=0.1),
    "stage2": dict(residual_dropout=0.1, response_residual_dropout=0.0),
    "finetune": dict(residual_dropout=0.1, response_residual_dropout=0.0),
}


def base_config(stage: str, preset: str) -> ml_collections.ConfigDict:
    if stage not in STAGES:
        raise ConfigError(f"stage={stage!r} is not one of {STAGES}")
    if preset not in PRESETS:
        raise ConfigError(f"model preset {preset!r} is not one of {sorted(PRESETS)}")
    recipe = RECIPE[stage]
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.seed = 6198
    c.model = ml_collections.ConfigDict(
        dict(
            preset=preset,
            dtype="bfloat16",  # compute; parameters and optimizer state stay float32
            param_dtype="float32",
            # "backbones": stage 1 from pretrained HF tower + LLM (convert CLI output or folders below);
            # "checkpoint": an HF-layout Molmo checkpoint (stage 2 from stage 1, or a released model);
            # "scratch": random init (tiny / demo presets).
            init="backbones" if stage == "stage1" else "checkpoint",
            checkpoint="",  # HF-layout Molmo folder for init=checkpoint / backbones (convert CLI output)
            tokenizer="",  # tokenizer folder or name; default: the checkpoint's
            vocab_from_tokenizer=False,  # size the (scratch) vocabulary to the tokenizer
            # init=scratch only: "" keeps the preset's random init; "normal" (std 0.02, the released
            # models') or "fan_in" (width-scaled, model.layers.kernel_init) for ViT, connector and LLM.
            weight_init="",
            crop_chunk=-1,
            remat=("vit", "llm"),  # recompute block activations in the backward pass, as the original
        )
    )
    c.data = ml_collections.ConfigDict(
        dict(
            data_dir="",
            tasks=tuple(recipe["tasks"]),  # a tuple, so `--config.data.tasks='("a", "b")'` overrides it
            # task -> sampling weight for every task of `tasks` (normalised); empty: the recipe's
            # mixture rates (sqrt of the prepared sizes within the stage-2 groups)
            task_weights={},
            sequence_length=2304,
            max_crops=12,
            crop_size=336,
            overlap_margins=(4, 4),  # patches dropped at each side of a crop's interior edges
            batch_size=recipe["batch_size"],  # global batch
            num_workers=2,
            max_conversations=0,  # 0: keep every conversation of an image
            on_bad_record="raise",
        )
    )
    c.optimizer = ml_collections.ConfigDict(
        dict(
            b1=0.9,
            b2=0.95,
            eps=1e-6,
            weight_decay=0.0,
            max_grad_norm=1.0,
            final_lr_fraction=0.1,
            # parameter path prefixes never updated: the original keeps the pretrained LLM's token
            # embedding fixed (only its new rows train); a model trained from scratch sets ()
            frozen=("llm.embedding",),
            lr=dict(recipe["lr"]),
            warmup=dict(recipe["warmup"]),
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(
            steps=recipe["steps"],
            grad_accum_steps=1,
            z_loss_weight=1e-4,
            **DROPOUT[stage],
            # MoE auxiliary losses (MoE presets only); 0 in the released recipe (MOLMO_SPEC §3.1)
            moe_load_balance_weight=0.0,
            moe_router_z_weight=0.0,
            loss_budget=0,  # logits at most at this many loss positions per example (0: every position)
            log_every=10,
            checkpoint_every=1000,
            keep_checkpoints=3,
            export_hf=True,  # write an HF-layout checkpoint at the end (next stage / generate / evaluate)
        )
    )
    # Degrees within a slice; `dcn` splits axes across slices (multi-slice: axis size = ici * dcn).
    c.mesh = ml_collections.ConfigDict(
        dict(data=-1, fsdp=1, tensor=1, expert=1, dcn=dict(data=1, fsdp=1, tensor=1, expert=1))
    )
    c.lora = lora_defaults()
    return c


def lora_defaults() -> ml_collections.ConfigDict:
    """LoRA settings (off by default): with `enabled` the trainer freezes the base (kept in
    `base_dtype`) and trains only rank-`rank` adapters on the weights whose paths match `targets`
    (regexes, see `molmo_jax.train.lora`; "default" and "all_linear" name the built-in sets)."""
    return ml_collections.ConfigDict(
        dict(
            enabled=False,
            rank=16,
            alpha=32.0,
            dropout=0.0,
            targets=("default",),  # LLM attention + MLP; "all_linear" adds the ViT and connector
            base_dtype="bfloat16",  # frozen weights; adapters and their optimizer state are float32
            lr=1e-4,
            warmup=100,
            export_merged=False,  # also write base + adapters merged as an HF checkpoint (WORKDIR/hf)
        )
    )


def use_tiny_model(c: ml_collections.ConfigDict, *, lr: dict[str, float]) -> ml_collections.ConfigDict:
    """The settings that let the `tiny` preset train on a CPU: 84-px crops (the tiny ViT's 6x6
    patches), short sequences, small batches, fp32 and higher learning rates."""
    c.model.dtype = "float32"
    c.model.remat = ()
    c.data.sequence_length = 384
    c.data.max_crops = 2
    c.data.crop_size = 84
    c.data.overlap_margins = (2, 2)
    c.data.batch_size = 4
    c.data.num_workers = 0
    c.train.steps = 200
    c.train.checkpoint_every = 100
    c.optimizer.lr = dict(lr)
    c.optimizer.warmup = dict(connector=20, vit=20, llm=20)
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Check values before any compilation; the error names the key."""

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"config.{key}={_get(c, key)!r}: {why}")

    need(c.stage in STAGES, "stage", f"must be one of {STAGES}")
    need(c.model.preset in PRESETS, "model.preset", f"must be one of {sorted(PRESETS)}")
    need(
        c.model.init in ("backbones", "checkpoint", "scratch"),
        "model.init",
        "backbones | checkpoint | scratch",
    )
    need(
        c.model.init == "scratch" or bool(c.model.checkpoint),
        "model.checkpoint",
        f"is required with model.init={c.model.init!r}",
    )
    weight_init = c.model.get("weight_init", "")
    need(weight_init in ("", *WEIGHT_INITS), "model.weight_init", f"must be '' or one of {WEIGHT_INITS}")
    need(
        not weight_init or c.model.init == "scratch",
        "model.weight_init",
        f"sets the random init, so it needs model.init='scratch' (got {c.model.init!r})",
    )
    need(c.model.dtype in ("float32", "bfloat16"), "model.dtype", "float32 or bfloat16")
    need(c.model.param_dtype in ("float32", "bfloat16"), "model.param_dtype", "float32 or bfloat16")
    need(len(c.data.tasks) > 0, "data.tasks", "needs at least one task")
    weights = dict(c.data.get("task_weights") or {})
    if weights:
        need(
            set(weights) == set(c.data.tasks),
            "data.task_weights",
            f"must give a weight to each task of data.tasks={list(c.data.tasks)} and no other",
        )
        need(
            all(isinstance(w, (int, float)) and w > 0 for w in weights.values()),
            "data.task_weights",
            "weights must be positive numbers",
        )
    need(c.data.sequence_length > 0, "data.sequence_length", "must be positive")
    need(c.data.max_crops > 0, "data.max_crops", "must be positive")
    need(c.data.batch_size > 0, "data.batch_size", "must be positive")
    need(
        c.data.batch_size % c.train.grad_accum_steps == 0,
        "train.grad_accum_steps",
        f"must divide data.batch_size={c.data.batch_size}",
    )
    need(c.train.steps > 0, "train.steps", "must be positive")
    need(c.train.loss_budget >= 0, "train.loss_budget", "must be >= 0")
    for key in ("residual_dropout", "response_residual_dropout"):
        need(0 <= c.train[key] < 1, f"train.{key}", "must be in [0, 1)")
    for key in ("moe_load_balance_weight", "moe_router_z_weight"):
        need(c.train[key] >= 0, f"train.{key}", "must be >= 0")
    need(c.train.checkpoint_every > 0, "train.checkpoint_every", "must be positive")
    need(0 <= c.optimizer.final_lr_fraction <= 1, "optimizer.final_lr_fraction", "must be in [0, 1]")
    need(
        all(isinstance(p, str) and p for p in c.optimizer.get("frozen", ())),
        "optimizer.frozen",
        "must be a list of parameter path prefixes such as 'llm.embedding'",
    )
    for group in ("connector", "vit", "llm"):
        need(c.optimizer.lr.get(group, -1) >= 0, f"optimizer.lr.{group}", "must be a non-negative number")
        need(c.optimizer.warmup.get(group, -1) >= 0, f"optimizer.warmup.{group}", "must be >= 0")
    if "lora" in c and c.lora.enabled:
        _validate_lora(c, need)
    sizes = [c.mesh[a] for a in ("data", "fsdp", "tensor", "expert")]
    need(sum(1 for s in sizes if s == -1) <= 1, "mesh", "at most one axis may be -1")
    need(all(s == -1 or s >= 1 for s in sizes), "mesh", "axis sizes must be >= 1 or -1")
    for key in c.mesh:
        need(key in ("data", "fsdp", "tensor", "expert", "dcn"), f"mesh.{key}", "is not a mesh axis")
    for key, size in (c.mesh.get("dcn") or {}).items():
        need(key in ("data", "fsdp", "tensor", "expert"), f"mesh.dcn.{key}", "is not a mesh axis")
        need(isinstance(size, int) and size >= 1, f"mesh.dcn.{key}", "dcn degrees must be integers >= 1")


LORA_TARGET_SETS = ("default", "all_linear")


def _validate_lora(c: ml_collections.ConfigDict, need) -> None:
    lo = c.lora
    need(isinstance(lo.rank, int) and lo.rank >= 1, "lora.rank", "must be an integer >= 1")
    need(lo.alpha > 0, "lora.alpha", "must be positive")
    need(0 <= lo.dropout < 1, "lora.dropout", "must be in [0, 1)")
    need(lo.base_dtype in ("float32", "bfloat16"), "lora.base_dtype", "float32 or bfloat16")
    need(lo.lr >= 0, "lora.lr", "must be >= 0")
    need(lo.warmup >= 0, "lora.warmup", "must be >= 0")
    targets = lo.targets
    need(
        isinstance(targets, (list, tuple)) and len(targets) > 0 and all(isinstance(t, str) for t in targets),
        "lora.targets",
        f"needs at least one regex or one of {LORA_TARGET_SETS}",
    )
    for t in targets:
        if t in LORA_TARGET_SETS:
            continue
        try:
            re.compile(t)
        except re.error as e:
            raise ConfigError(f"config.lora.targets: {t!r} is not a valid regex ({e})") from None


def _get(c, dotted: str):
    node = c
    for part in dotted.split("."):
        node = node.get(part) if hasattr(node, "get") else None
    return node
