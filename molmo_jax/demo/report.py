"""The demo's report: targets against the trained model and the blank-image control, loss curves,
an HTML page with the example and links to every evaluation's own report, and the console table."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

# What the demo is judged on: (name, eval task, metric key, description).
SCORES = (
    ("counting", "pixmo_count_counting", "correct", "counting accuracy, 0-10 objects"),
    ("pointing", "pixmo_points_eval", "f1", "pointing F1"),
    ("clocks", "pixmo_clocks", "within_2_minutes", "clock time within 2 minutes"),
)


def summarize(evals: Mapping[str, Any], targets: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """Per judged score: target, trained value, blank-image value, margin and whether both hold."""
    rows = {}
    for name, task, key, label in SCORES:
        trained = float(evals["trained"][task][key])
        blank = float(evals["blank"][task][key])
        rows[name] = {
            "label": label,
            "task": task,
            "metric": key,
            "target": float(targets[name]),
            "trained": trained,
            "blank": blank,
            "margin": trained - blank,
            "meets_target": trained >= targets[name],
            "beats_blank": trained - blank >= targets.margin_over_blank,
        }
    return rows


def table(summary: Mapping[str, Any], targets: ml_collections.ConfigDict) -> str:
    """The console table: each score's target, the trained model, the blank control and the margin."""
    head = f"{'score':<34} {'target':>8} {'trained':>8} {'blank':>8} {'margin':>8}  result"
    lines = [head, "-" * len(head)]
    need = targets.margin_over_blank
    for row in summary["scores"].values():
        ok = "PASS" if row["meets_target"] and row["beats_blank"] else "MISS"
        why = [] if row["meets_target"] else ["below target"]
        why += [] if row["beats_blank"] else [f"margin < {need:.2f}"]
        lines.append(
            f"{row['label']:<34} {'>= ' + format(row['target'], '.2f'):>8} {row['trained']:>8.3f} "
            f"{row['blank']:>8.3f} {row['margin']:>+8.3f}  {ok}{' (' + ', '.join(why) + ')' if why else ''}"
        )
    losses = summary.get("heldout_loss") or {}
    if losses:
        title = "held-out answer loss (lower: better)"
        lines += ["", f"{title:<34} {'':>8} {'trained':>8} {'blank':>8} {'diff':>8}"]
        for task, r in losses.items():
            diff = r["trained"] - r["blank"]
            lines.append(f"{task:<34} {'':>8} {r['trained']:>8.3f} {r['blank']:>8.3f} {diff:>+8.3f}")
    return "\n".join(lines)


def loss_curves(stages: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Training loss against step for each stage, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.6), squeeze=False)
    for ax, (name, stage) in zip(axes[0], stages.items()):
        steps = [h["step"] for h in stage["history"]]
        ax.plot(steps, [h["loss"] for h in stage["history"]], marker=".", lw=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    folder: Path,
    c: ml_collections.ConfigDict,
    stage1: Mapping[str, Any],
    stage2: Mapping[str, Any],
    evals: Mapping[str, Any],
    eval_dir: Path,
) -> dict[str, Any]:
    """``metrics.json``, ``loss_curves.png`` and ``index.html`` in `folder`; returns the summary."""
    stages = {"stage 1 (captions)": stage1, "stage 2 (multitask)": stage2}
    summary = {
        "scores": summarize(evals, c.targets),
        "metrics": {k: v for k, v in evals.items() if k != "heldout_loss"},
        "heldout_loss": evals.get("heldout_loss", {}),
        "loss": {k: [v["history"][0]["loss"], v["history"][-1]["loss"]] for k, v in stages.items()},
    }
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2))
    loss_curves(stages, folder / "loss_curves.png")

    def link(kind: str, task: str) -> str:
        target = Path(os.path.relpath(eval_dir / kind / task / "report.html", folder))
        return f"<a href='{html.escape(target.as_posix())}'>{kind}</a>"

    rows = "".join(
        f"<tr><td>{html.escape(r['label'])}</td><td>&ge; {r['target']:.2f}</td><td><b>{r['trained']:.3f}</b>"
        f"</td><td>{r['blank']:.3f}</td><td>{r['margin']:+.3f}</td>"
        f"<td>{'PASS' if r['meets_target'] and r['beats_blank'] else 'MISS'}</td>"
        f"<td>{link('trained', r['task'])} / {link('blank', r['task'])}</td></tr>"
        for r in summary["scores"].values()
    )
    loss_rows = "".join(
        f"<tr><td>{html.escape(task)}</td><td><b>{r['trained']:.3f}</b></td><td>{r['blank']:.3f}</td>"
        f"<td>{r['trained'] - r['blank']:+.3f}</td><td>{r['tokens']}</td></tr>"
        for task, r in summary["heldout_loss"].items()
    )
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>molmo-jax demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>molmo-jax demo</h1>
<p>A {html.escape(c.stage1.model.preset)} Molmo trained from scratch on synthetic PixMo-style data:
stage 1 on dense captions, stage 2 on pointing, counting, clocks and questions, then evaluated on
held-out images and on the same images blanked (the control: a model that reads the pixels must
lose its skill there).</p>
<h2>Scores</h2><table><tr><th>score</th><th>target</th><th>trained</th><th>blank images</th>
<th>margin</th><th>result</th><th>examples</th></tr>{rows}</table>
<p>Each score must reach its target and beat the blank control by at least
{c.targets.margin_over_blank:.2f}.</p>
<h2>Held-out answer loss</h2><p>Teacher-forced cross-entropy per answer token on held-out images,
real and blanked: the sensitive form of the control (it drops as soon as the model reads anything
from the pixels, long before the scores above move).</p>
<table><tr><th>task</th><th>trained</th><th>blank images</th><th>difference</th><th>answer tokens</th></tr>
{loss_rows}</table>
<h2>Training loss</h2><img src='loss_curves.png' alt='loss curves'>
<h2>Example</h2><div id='example'><p>See <a href='../example/example.json'>example.json</a> and
<a href='../example/example.png'>example.png</a> (predicted points in red).</p>
<img src='../example/example.png' alt='example with predicted points' width='336'></div>
</body></html>"""
    (folder / "index.html").write_text(page, encoding="utf-8")
    return summary


def example(
    folder: Path,
    c: ml_collections.ConfigDict,
    checkpoint: str,
    data_dir: str,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One `generate` call on a held-out scene: print the answer and save the drawn points."""
    from PIL import Image

    from molmo_jax.checkpoints.hf import load_pretrained
    from molmo_jax.data.prepare import open_prepared
    from molmo_jax.infer.generate import generate
    from molmo_jax.preprocess.image import load_image
    from molmo_jax.preprocess.pointing import draw_points
    from molmo_jax.preprocess.processor import MolmoProcessor

    record = open_prepared(data_dir, "pixmo_points_eval", "validation")[int(c.example.index)]
    label = record["annotations"][0]["label"]
    image = load_image(record["image"])
    Image.fromarray(image).save(folder / "image.png")
    prompt = c.example.prompt.format(label=label)
    processor = MolmoProcessor.from_pretrained(
        checkpoint, max_crops=int(c.eval.max_crops), overlap_margins=tuple(c.eval.overlap_margins)
    )
    model = load_pretrained(checkpoint)
    out = generate(model, processor, image, prompt, max_new_tokens=192, style="pointing")
    points = [list(map(float, p)) for p in out.points[0]]
    draw_points(image, np.asarray(points).reshape(-1, 2)).save(folder / "example.png")
    truth = np.asarray(record["annotations"][0]["points"], np.float64).reshape(-1, 2)
    result = {
        "image": str(folder / "image.png"),
        "prompt": prompt,
        "answer": out.texts[0],
        "points_px": points,
        "true_points_px": truth.tolist(),
        "drawn": str(folder / "example.png"),
    }
    (folder / "example.json").write_text(json.dumps(result, indent=2))
    log(f"  prompt: {prompt}")
    log(f"  answer: {out.texts[0].strip()}")
    log(f"  {len(points)} points (true: {len(truth)}), drawn on {folder / 'example.png'}")
    return result
