"""`make demo`: synthetic PixMo-style data -> stage 1 -> stage 2 -> evaluation with a blank-image
control -> report, for the `demo` model preset on one CPU (about 15 minutes on 2 cores).

Run:
    python -m molmo_jax.cli.demo --config=configs/demo.py --out=demo_out [--fresh]
    python -m molmo_jax.cli.demo --config=configs/demo.py --config.stage2.train.steps=800  # any field
    python -m molmo_jax.cli.demo --config.stage1.model.weight_init=fan_in  # width-scaled random init

`stage1` and `stage2` are ordinary trainer configs (`configs/stage1_caption.py`, `stage2_multitask.py`)
whose data, tokenizer and checkpoint paths the demo fills in; `eval` is an `configs/eval.py` config.
`:quick` is a minutes-long smoke run of the same phases (tests, first look).
"""

import importlib.util
from pathlib import Path

import ml_collections

from molmo_jax.train.config import base_config


def _sibling(name: str):
    """Another config file of this folder, as a module."""
    spec = importlib.util.spec_from_file_location(f"configs_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trainer(stage: str, tasks: list[str], steps: int, lr: float, warmup: int) -> ml_collections.ConfigDict:
    c = base_config(stage, "demo")
    c.model.init = "scratch" if stage == "stage1" else "checkpoint"
    c.model.vocab_from_tokenizer = stage == "stage1"
    c.model.dtype = "float32"
    c.model.remat = ()
    c.model.crop_chunk = 0  # all crops through the ViT at once: faster for a model this small
    c.data.tasks = tasks
    c.data.crop_size = 140
    c.data.max_crops = 4  # 2x2 overlapping crops + the global view
    c.data.overlap_margins = (2, 2)  # 2x2 crops of 10x10 patches tile a 224-px image exactly
    c.data.sequence_length = 320  # the longest caption or 10-point answer with its 89 image tokens
    c.data.batch_size = 16
    c.data.num_workers = 0
    c.train.steps = steps
    c.train.log_every = 25
    c.train.checkpoint_every = 100
    c.train.keep_checkpoints = 1
    c.train.residual_dropout = 0.0  # a model this far from fitting its data needs no regularisation
    c.train.response_residual_dropout = 0.0
    c.optimizer.lr = dict(connector=lr, vit=lr, llm=lr)
    c.optimizer.warmup = dict(connector=warmup, vit=warmup, llm=warmup)
    c.optimizer.final_lr_fraction = 0.05
    c.optimizer.frozen = ()  # a model trained from scratch also trains its token embedding
    c.mesh.data = 1
    return c


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    if arg not in ("default", "quick"):
        raise ValueError(f"unknown demo preset {arg!r}; choose 'default' or 'quick'")
    quick = arg == "quick"
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(
        dict(
            image_size=224,
            train_scenes=24 if quick else 1500,  # shape scenes; each gives caption, points, count, QA rows
            train_clocks=24 if quick else 1500,
            val_scenes=11 if quick else 110,  # held out: another seed, 10 per object count 0..10
            val_clocks=8 if quick else 100,
            point_queries=4,  # pointing rows per training scene (main query + 3 others), packed per image
            train_seed=0,
            val_seed=1,
        )
    )
    c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=1000))
    c.stage1 = _trainer("stage1", ["pixmo_cap"], 6 if quick else 100, 1e-3, 20)
    c.stage2 = _trainer(
        "stage2",
        [
            "pixmo_points",
            "pixmo_points_high_freq_counting",
            "pixmo_count_counting",
            "pixmo_clocks",
            "pixmo_ask_model_anything",
        ],
        6 if quick else 300,  # 100 + 300 steps keep the whole run under 15 min on a slow 2-core day
        1e-3,
        30,
    )
    if quick:
        for s in (c.stage1, c.stage2):
            s.data.batch_size = 4
            s.train.log_every = 2
            s.train.checkpoint_every = 3
    c.eval = _sibling("eval").get_config("synthetic")  # counting, pointing, clocks on held-out images
    c.eval.max_crops = c.stage2.data.max_crops
    c.eval.sequence_length = c.stage2.data.sequence_length
    c.eval.overlap_margins = tuple(c.stage2.data.overlap_margins)
    c.eval.report_examples = 12
    c.eval.heldout_loss_examples = 64  # per stage-2 task: answer loss with real and with blank images
    # What the demo must reach (issue targets) and by how much it must beat the blank-image control.
    c.targets = ml_collections.ConfigDict(
        dict(counting=0.80, pointing=0.70, clocks=0.60, margin_over_blank=0.30)
    )
    c.example = ml_collections.ConfigDict(dict(index=3, prompt="Point to the {label}."))
    return c
