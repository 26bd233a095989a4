"""The demo job: every phase of the real pipeline at a size one CPU trains in minutes.

Phases (each in ``OUT/<phase>/``, finished ones reused on a re-run unless ``fresh``):

1. ``data``: synthetic scenes and clocks (``molmo_jax.data.synthetic``), train and held-out splits
   from different seeds, through ``prepare_pixmo`` like real PixMo;
2. ``tokenizer``: a byte-level BPE trained on the formatted training conversations;
3. ``stage1``: caption pre-training of the ``demo`` preset from scratch (``molmo_jax.train.loop``);
4. ``stage2``: multitask fine-tuning from the stage-1 export;
5. ``eval``: counting, pointing and clocks on the held-out split, and the same with blank images;
6. ``report``: ``metrics.json``, ``loss_curves.png``, ``index.html`` and the console table;
7. ``example``: one ``generate`` call on a held-out image, its answer and the drawn points.

A phase writes ``phase.json`` (its settings and seconds) when it finishes; a re-run with other
settings for a finished phase stops and names it (use ``fresh``). Training phases interrupted midway
resume from their last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

PHASES = ("data", "tokenizer", "stage1", "stage2", "eval", "report", "example")
DATASETS = ("pixmo_cap", "pixmo_points", "pixmo_count", "pixmo_ask_model_anything", "pixmo_clocks")


class DemoError(RuntimeError):
    pass


def _settings(value: Any) -> Any:
    """Config sections (nested in dicts) as plain JSON values, tuples as lists, for comparing runs."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _settings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_settings(v) for v in value]
    return json.loads(json.dumps(value))


class Phases:
    """Runs named phases once: skips those whose ``phase.json`` exists with the same settings."""

    def __init__(self, out: Path, log: Callable[[str], None] = print):
        self.out, self.log = out, log
        self.seconds: dict[str, float] = {}

    def run(self, name: str, settings: Any, fn: Callable[[Path], dict | None]) -> dict:
        folder = self.out / name
        marker = folder / "phase.json"
        settings = _settings(settings)
        if marker.exists():
            done = json.loads(marker.read_text())
            if done.get("settings") != settings:
                raise DemoError(
                    f"phase {name!r} in {folder} finished with other settings; run with --fresh "
                    f"(or delete {folder}) to redo it"
                )
            self.seconds[name] = 0.0
            self.log(f"[{name}] reused from {folder} (took {done['seconds']:.0f} s when it ran)")
            return done.get("result") or {}
        self.log(f"[{name}] ...")
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = fn(folder) or {}
        seconds = time.perf_counter() - start
        self.seconds[name] = seconds
        marker.write_text(json.dumps({"settings": settings, "seconds": seconds, "result": result}, indent=2))
        self.log(f"[{name}] done in {_clock(seconds)}")
        return result


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


# ----------------------------------------------------------------------------------------------
# The phases


def make_data(c: ml_collections.ConfigDict, folder: Path) -> dict:
    from molmo_jax.data.prepare import prepare_pixmo
    from molmo_jax.data.synthetic import write_synthetic

    d = c.data
    raw, prepared = folder / "raw", folder / "prepared"
    rows = {}
    for split, seed, scenes, clocks in (
        ("train", d.train_seed, d.train_scenes, d.train_clocks),
        ("validation", d.val_seed, d.val_scenes, d.val_clocks),
    ):
        written = write_synthetic(
            raw,
            scenes,
            seed,
            image_size=d.image_size,
            split=split,
            num_clocks=clocks,
            point_queries=d.get("point_queries", 2),
        )
        rows[split] = {k: v["rows"] for k, v in written.items()}
    names = [*DATASETS, "pixmo_points_eval"]
    for name in names:
        prepare_pixmo(name, raw / name, prepared, progress=False, overwrite=True)
    return {"data_dir": str(prepared), "rows": rows}


def training_texts(data_dir: str, tasks: Iterable[str], image_size: int, seed: int = 0) -> Iterable[str]:
    """The formatted text of every training conversation of `tasks` (prompts and answers); points
    are written in percent of `image_size`, the side of every synthetic image."""
    from molmo_jax.data.pipeline import resolve_task
    from molmo_jax.data.prepare import open_prepared
    from molmo_jax.preprocess.formatting import FormatterConfig, format_example

    cfg = FormatterConfig()

    def flatten(x):
        if isinstance(x, str):
            yield x
        else:
            for y in x:
                yield from flatten(y)

    for name in tasks:
        task = resolve_task(name, data_dir)
        source = open_prepared(data_dir, task.prepared, "train")
        for i in range(len(source)):
            rng = np.random.RandomState(seed + i)
            example = dict(task(source[i], rng), image=None)
            hw = (image_size, image_size)
            convs, _ = format_example(example, for_inference=False, rng=rng, cfg=cfg, image_hw=hw)
            yield from flatten(convs)


def make_tokenizer(c: ml_collections.ConfigDict, data_dir: str, folder: Path) -> dict:
    from molmo_jax.preprocess.tokenizer import MolmoTokenizer, train_bpe_tokenizer

    tasks = list(dict.fromkeys([*c.stage1.data.tasks, *c.stage2.data.tasks]))
    texts = training_texts(data_dir, tasks, c.data.image_size)
    out = train_bpe_tokenizer(
        texts,
        folder / "tokenizer",
        c.tokenizer.vocab_size,
        pre_tokenizer=c.tokenizer.get("pre_tokenizer", "gpt2"),
    )
    tok = MolmoTokenizer.from_pretrained(out)
    return {"tokenizer": str(out), "vocab_size": int(tok.image_start_id)}


def run_stage(cfg: ml_collections.ConfigDict, folder: Path, log: Callable[[str], None]) -> dict:
    from molmo_jax.train.loop import train

    summary = train(cfg, folder / "run")
    if "hf_checkpoint" not in summary:
        raise DemoError(f"training in {folder / 'run'} stopped before its last step ({summary['end_step']})")
    losses = [h["loss"] for h in summary["history"]]
    log(f"  loss {losses[0]:.3f} -> {losses[-1]:.3f} over {summary['end_step']} steps")
    return {
        "checkpoint": summary["hf_checkpoint"],
        "history": [{"step": h["step"], "loss": h["loss"]} for h in summary["history"]],
    }


def run_eval(c: ml_collections.ConfigDict, checkpoint: str, data_dir: str, folder: Path) -> dict:
    from molmo_jax.eval.evaluate import build_processor, evaluate, load_model

    ec = ml_collections.ConfigDict(c.eval.to_dict())
    ec.checkpoint, ec.data_dir = checkpoint, data_dir
    processor, model = build_processor(ec), load_model(ec)
    results = {}
    for kind, blank in (("trained", False), ("blank", True)):
        out = evaluate(
            ec, folder / kind, model=model, processor=processor, blank_images=blank, progress=False
        )
        results[kind] = {task: r["metrics"] for task, r in out.items()}
    results["heldout_loss"] = heldout_losses(c, model, processor, data_dir)
    return results


def heldout_losses(c: ml_collections.ConfigDict, model, processor, data_dir: str) -> dict:
    """Teacher-forced answer loss of each stage-2 task on held-out images, real and blanked."""
    from molmo_jax.eval.heldout_loss import heldout_loss

    kw = dict(
        batch_size=int(c.eval.batch_size),
        sequence_length=int(c.stage2.data.sequence_length),
        max_crops=int(c.stage2.data.max_crops) + 1,  # the training crop budget: tiles + global view
        max_examples=int(c.eval.heldout_loss_examples),
    )
    out = {}
    for task in c.stage2.data.tasks:
        real = heldout_loss(model, processor, data_dir, task, **kw)
        blank = heldout_loss(model, processor, data_dir, task, blank_images=True, **kw)
        out[task] = {"trained": real["loss"], "blank": blank["loss"], "tokens": real["tokens"]}
    return out


def run_demo(
    c: ml_collections.ConfigDict,
    out: str | Path = "demo_out",
    *,
    fresh: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) every phase into `out`; returns the report's metrics dict."""
    from molmo_jax.demo import report

    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    phases = Phases(out, log)
    start = time.perf_counter()

    data = phases.run("data", c.data, lambda f: make_data(c, f))
    data_dir = data["data_dir"]
    tok = phases.run(
        "tokenizer",
        {"tokenizer": c.tokenizer, "data": c.data},
        lambda f: make_tokenizer(c, data_dir, f),
    )

    s1 = ml_collections.ConfigDict(c.stage1.to_dict())
    s1.data.data_dir, s1.model.tokenizer = data_dir, tok["tokenizer"]
    stage1 = phases.run("stage1", {"config": c.stage1, "data": c.data}, lambda f: run_stage(s1, f, log))

    s2 = ml_collections.ConfigDict(c.stage2.to_dict())
    s2.data.data_dir, s2.model.checkpoint, s2.model.tokenizer = data_dir, stage1["checkpoint"], ""
    stage2 = phases.run(
        "stage2", {"config": c.stage2, "stage1": c.stage1, "data": c.data}, lambda f: run_stage(s2, f, log)
    )

    everything = {k: c[k] for k in ("data", "tokenizer", "stage1", "stage2", "eval")}
    evals = phases.run("eval", everything, lambda f: run_eval(c, stage2["checkpoint"], data_dir, f))
    summary = phases.run(
        "report",
        {**everything, "targets": c.targets},
        lambda f: report.write_report(f, c, stage1, stage2, evals, out / "eval"),
    )
    phases.run(
        "example",
        {**everything, "example": c.example},
        lambda f: report.example(f, c, stage2["checkpoint"], data_dir, log),
    )
    log("")
    log(report.table(summary, c.targets))
    total = time.perf_counter() - start
    log("")
    log("phase times: " + ", ".join(f"{k} {_clock(v)}" for k, v in phases.seconds.items()))
    log(f"total {_clock(total)}; report: {out / 'report' / 'index.html'}")
    return summary


def untrained_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """A randomly initialised ``demo``-preset checkpoint with a small tokenizer, in the layout of
    the demo's trained one (for trying the API before ``make demo`` has run: its answers are noise)."""
    import dataclasses

    from flax import nnx

    from molmo_jax.checkpoints.hf import save_pretrained
    from molmo_jax.data.synthetic import render_shapes, scene_caption
    from molmo_jax.model.config import get_preset
    from molmo_jax.model.molmo import Molmo
    from molmo_jax.preprocess.processor import MolmoProcessor
    from molmo_jax.preprocess.tokenizer import MolmoTokenizer, train_bpe_tokenizer

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    texts = [scene_caption(render_shapes(rng)[1]) for _ in range(20)]
    train_bpe_tokenizer(texts + ['<points x1="12.5" y1="40.0" alt="circles">circles</points>'], folder, 400)
    base = MolmoTokenizer.from_pretrained(folder).image_start_id
    cfg = get_preset("demo")
    # No padding rows: an untrained model must not emit ids the tokenizer cannot decode.
    llm = dataclasses.replace(cfg.llm, vocab_size=base, embedding_size=base)
    save_pretrained(Molmo(cfg.replace(llm=llm), rngs=nnx.Rngs(seed)), folder)
    demo = get_demo_config()
    MolmoProcessor.from_pretrained(
        folder,
        max_crops=demo.stage2.data.max_crops,
        overlap_margins=tuple(demo.stage2.data.overlap_margins),
    ).save_pretrained(folder)
    return folder


def get_demo_config(arg: str = "default") -> ml_collections.ConfigDict:
    """``configs/demo.py``'s config (the file next to the package in a source checkout)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "configs" / "demo.py"
    if not path.exists():
        raise DemoError(f"{path} not found: the demo runs from a source checkout of molmo-jax")
    spec = importlib.util.spec_from_file_location("configs_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
