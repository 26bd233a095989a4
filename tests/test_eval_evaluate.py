"""The evaluator (`molmo_jax.eval.evaluate`, `python -m molmo_jax.cli.evaluate`) on synthetic PixMo data.

Scoring is checked with a scripted generator that answers from the references (right on even
indices, wrong on odd ones), so the metrics are known in advance; the tiny random model runs the real
decoding path (blank-image control, report, CLI)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from helpers import load_config, train_bpe_tokenizer

from molmo_jax.eval import metrics as M

TASKS = ("pixmo_count_counting", "pixmo_points_eval", "pixmo_clocks")
NUM = 6


def _eval_config(arg: str = "synthetic"):
    return load_config("eval", arg)


def _train_tokenizer(texts: list[str], folder: Path) -> None:
    train_bpe_tokenizer(folder, texts, vocab_size=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, model, processor): a tiny random model saved with a small tokenizer, and 6 synthetic
    validation scenes / clocks prepared for the three synthetic eval tasks."""
    import pyarrow.parquet as pq
    from flax import nnx

    from molmo_jax.checkpoints.hf import save_pretrained
    from molmo_jax.data.prepare import prepare_pixmo
    from molmo_jax.data.synthetic import write_synthetic
    from molmo_jax.eval.evaluate import build_processor
    from molmo_jax.model.config import tiny
    from molmo_jax.model.molmo import Molmo

    root = tmp_path_factory.mktemp("eval")
    written = write_synthetic(root / "raw", NUM, seed=1, image_size=112, split="validation")
    texts = ["User: Assistant: point_count pointing clocks There are The time shown is 0123456789"]
    for name in ("pixmo_count", "pixmo_points_eval", "pixmo_clocks", "pixmo_cap"):
        for row in pq.read_table(written[name]["path"]).to_pylist():
            texts += [str(row[k]) for k in ("label",) if row.get(k)]
        prepare_pixmo(name, Path(written[name]["path"]).parent, root / "data", progress=False)
    model = Molmo(tiny(), rngs=nnx.Rngs(0))
    ckpt = save_pretrained(model, root / "ckpt")
    _train_tokenizer(texts, Path(ckpt))

    c = _eval_config("synthetic")
    c.checkpoint = str(ckpt)
    c.data_dir = str(root / "data")
    c.batch_size = 4
    return c, model, build_processor(c)


def _key(prompt: str, image: np.ndarray) -> tuple[str, str]:
    """An example's identity as the model sees it: prompt text and global-view crop."""
    return prompt, hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()


class ScriptedGenerator:
    """Stands in for `Generator`: answers every example from `answer_for((prompt, image hash))`,
    counts calls and keeps the batches it was given."""

    def __init__(self, processor, answer_for):
        self.processor, self.answer_for = processor, answer_for
        self.calls, self.batches = 0, []

    def generate(self, batch, eos_id, cfg, key=None):
        from molmo_jax.eval.evaluate import _prompt_text
        from molmo_jax.infer.decoding import Generated

        self.calls += 1
        self.batches.append(batch)
        tok = self.processor.tokenizer
        rows = []
        for ids, image in zip(batch["input_ids"], batch["images"]):
            if (ids >= 0).sum() == 0:  # padding row of a last partial batch
                rows.append([eos_id])
                continue
            answer = self.answer_for(_key(_prompt_text(tok, ids), image[0]))
            rows.append(tok.encode(answer) + [eos_id])
        n = max(len(r) for r in rows)
        tokens = np.full((len(rows), n), eos_id, np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
        lengths = np.array([len(r) for r in rows])
        return Generated(tokens=tokens, scores=np.zeros(len(rows), np.float32), lengths=lengths)


def _records(c, task):
    from molmo_jax.data import prepare
    from molmo_jax.data.pipeline import resolve_task

    src = prepare.open_prepared(c.data_dir, resolve_task(task, c.data_dir).prepared, c.split)
    return [src[i] for i in range(len(src))]


def _scripted_answers(c):
    """(task, prompt, image hash) -> answer for every example of the three tasks: right on even
    indices, wrong on odd ones."""
    from molmo_jax.data.pipeline import resolve_task
    from molmo_jax.eval.evaluate import _prompt_text, build_processor

    proc = build_processor(c)
    table = {}
    for task in TASKS:
        t = resolve_task(task, c.data_dir)
        for i, rec in enumerate(_records(c, task)):
            rs = np.random.RandomState(c.seed + i)
            ex = proc.process_example(t(rec, rs), for_inference=True, rng=rs)
            prompt = _prompt_text(proc.tokenizer, ex["input_ids"])
            ann = rec["annotations"][0]
            good = i % 2 == 0
            if task == "pixmo_count_counting":
                answer = f"There are {ann['count'] + (0 if good else 3)}"
            elif task == "pixmo_points_eval":
                pts = np.asarray(ann["points"]).reshape(-1, 2) / np.array([rec["width"], rec["height"]]) * 100
                if not good:
                    pts = np.full((1, 2), 0.5)  # a corner: in no mask
                attrs = " ".join(f'x{k + 1}="{x:.1f}" y{k + 1}="{y:.1f}"' for k, (x, y) in enumerate(pts))
                answer = f'<points {attrs} alt="things">things</points>' if len(pts) else "There are none."
            else:
                h = ann["hour"] % 12 or 12
                m = ann["minute"] if good else (ann["minute"] + 30) % 60
                sec = f":{ann['second']:02d}" if ann.get("second") is not None and ann["second"] >= 0 else ""
                answer = f"The time shown is {h}:{m:02d}{sec}"
            table[(task, *_key(prompt, ex["images"][0]))] = answer
    return table


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scores_files_resume_and_overwrite(setup, tmp_path):
    from molmo_jax.eval.evaluate import evaluate_task

    c, _, proc = setup
    table = _scripted_answers(c)
    for task in TASKS:
        gen = ScriptedGenerator(proc, lambda k, task=task: table[(task, *k)])
        out = tmp_path / task
        r = evaluate_task(c, task, out, processor=proc, generator=gen, progress=False)
        assert gen.calls == 2 and r["generated_batches"] == 2  # 6 examples in batches of 4
        rows = _rows(out / "predictions.jsonl")
        assert [row["id"] for row in rows] == [f"{task}/{i}" for i in range(NUM)]
        keys = {"id", "index", "prompt", "prediction", "references", "parsed", "scores", "image_size"}
        assert all(keys <= set(row) for row in rows)

        # Every per-example score is the metric function applied to the stored prediction.
        records = _records(c, task)
        for row in rows:
            ann, pred = records[row["index"]]["annotations"][0], row["prediction"]
            if task == "pixmo_count_counting":
                assert row["references"] == ann["count"] and row["parsed"] == M.parse_count(pred)
                expected = M.count_scores(pred, ann["count"])
            elif task == "pixmo_points_eval":
                masks = [np.asarray(m, bool) for m in ann["masks"]]
                expected = M.pointing_scores(pred, ann["points"], masks, tuple(row["image_size"]))
            else:
                sec = ann["second"] if ann.get("second") is not None else -1
                expected = M.clock_scores(pred, ann["hour"], ann["minute"], sec)
                off = M.clock_minutes_off(pred, ann["hour"], ann["minute"], sec)
                expected["within_2_minutes"] = off is not None and off <= 2
            assert row["scores"] == pytest.approx(expected)
            key = {"pixmo_points_eval": "recall", "pixmo_clocks": "all_correct"}.get(task, "correct")
            assert row["scores"][key] == (row["index"] % 2 == 0), row

        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["num_examples"] == NUM and metrics["metric"] == r["metric"]
        scores = [row["scores"] for row in rows]
        if task == "pixmo_count_counting":
            gts = [row["references"] for row in rows]
            assert metrics["metrics"] == pytest.approx(M.count_aggregate(scores, gts))
            assert metrics["metrics"]["correct"] == pytest.approx(0.5)
            assert sum(metrics["gt_counts"].values()) == NUM
        else:
            assert metrics["metrics"] == pytest.approx(M.aggregate_scores(scores))
        key = {"pixmo_points_eval": "f1", "pixmo_clocks": "all_correct"}.get(task, "correct")
        assert metrics["metrics"][key] == pytest.approx(0.5, abs=1e-6)
        report = (out / "report.html").read_text()
        assert '<table class="metrics">' in report and key in report and "data:image/png;base64" in report

    # Resume: a crash lost the last two lines and left a cut one; only those examples are redone.
    task = "pixmo_count_counting"
    out = tmp_path / task
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(lines[:4]) + lines[4][:20])
    gen = ScriptedGenerator(proc, lambda k: table[(task, *k)])
    r = evaluate_task(c, task, out, processor=proc, generator=gen, progress=False)
    assert gen.calls == 1 and r["skipped"] == 4
    assert int((gen.batches[0]["input_ids"] >= 0).any(axis=1).sum()) == 2
    rows = _rows(out / "predictions.jsonl")
    assert sorted(row["id"] for row in rows) == [f"{task}/{i}" for i in range(NUM)]
    assert r["metrics"]["correct"] == pytest.approx(0.5)

    gen = ScriptedGenerator(proc, lambda k: table[(task, *k)])
    evaluate_task(c, task, out, processor=proc, generator=gen, progress=False)
    assert gen.calls == 0  # nothing left to do

    gen = ScriptedGenerator(proc, lambda k: "There are 0")
    r = evaluate_task(c, task, out, processor=proc, generator=gen, overwrite=True, progress=False)
    assert gen.calls == 2 and len(_rows(out / "predictions.jsonl")) == NUM
    assert all(row["prediction"] == "There are 0" for row in _rows(out / "predictions.jsonl"))

    # Other settings into the same folder are refused without overwrite.
    with pytest.raises(ValueError, match="blank_images"):
        evaluate_task(c, task, out, processor=proc, generator=gen, blank_images=True, progress=False)


def test_blank_images_tiny_model_and_report(setup, tmp_path):
    from molmo_jax.eval.evaluate import evaluate
    from molmo_jax.infer.decoding import Generator

    c, model, proc = setup
    c = c.copy_and_resolve_references()
    c.task = "pixmo_count_counting"
    c.max_new_tokens = 3
    c.max_examples = 4
    seen = []
    original = Generator.generate

    def spy(self, batch, *a, **k):
        seen.append(np.array(batch["images"]))
        return original(self, batch, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Generator, "generate", spy)
        normal = evaluate(c, tmp_path / "normal", model=model, processor=proc, progress=False)
        blank = evaluate(
            c, tmp_path / "blank", model=model, processor=proc, blank_images=True, progress=False
        )
    assert len(seen) == 2
    images, blanked = seen  # [4, crops, patches, patch_dim]; every synthetic image is 112 x 112
    assert not np.array_equal(images[0], images[1])
    assert all(np.array_equal(blanked[0], blanked[i]) for i in range(1, 4))
    assert not np.array_equal(images[0], blanked[0])
    for run, flag in ((normal, False), (blank, True)):
        r = run["pixmo_count_counting"]
        assert r["blank_images"] is flag and r["num_examples"] == 4
    rows = _rows(tmp_path / "blank" / "pixmo_count_counting" / "predictions.jsonl")
    assert len(rows) == 4 and all(isinstance(row["prediction"], str) for row in rows)
    summary = json.loads((tmp_path / "blank" / "metrics.json").read_text())
    assert summary["pixmo_count_counting"]["blank_images"] is True
    report = (tmp_path / "blank" / "pixmo_count_counting" / "report.html").read_text()
    assert "blank-image control" in report and "<td>correct</td>" in report


def test_cli(setup, tmp_path):
    c, _, _ = setup
    cmd = [
        sys.executable,
        "-m",
        "molmo_jax.cli.evaluate",
        "--config=configs/eval.py:synthetic_counting",
        f"--checkpoint={c.checkpoint}",
        f"--config.data_dir={c.data_dir}",
        "--config.max_examples=2",
        "--config.max_new_tokens=2",
        f"--workdir={tmp_path}",
        "--noprogress",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "pixmo_count_counting (count, 2 examples)" in run.stdout
    assert len(_rows(tmp_path / "pixmo_count_counting" / "predictions.jsonl")) == 2
    assert (tmp_path / "pixmo_count_counting" / "metrics.json").exists()
    assert (tmp_path / "pixmo_count_counting" / "report.html").exists()


@pytest.mark.parametrize(
    "metric, prediction, metadata, expected",
    [
        ("vqa_score", "Two", {"answers": ["2", "2", "2", "two"]}, {"vqa_score": 1.0}),
        ("anls", "Answer: invoce", {"answers": ["invoice"]}, {"anls": 1 - 1 / 7}),
        ("relaxed_correctness", "10.4", {"answers": ["10"]}, {"relaxed_correctness": True}),
        ("em", "Paris", {"answers": ["paris"]}, {"em": True}),
        ("mc", "B", {"options": ["cat", "dog"], "option_names": ["A", "B"], "answer_idx": 0}, {"mc": False}),
    ],
)
def test_score_example_academic_metrics(metric, prediction, metadata, expected):
    from molmo_jax.eval.evaluate import score_example

    parsed, refs, scores = score_example(metric, prediction, metadata)
    assert scores == pytest.approx(expected)
    if metric == "mc":
        assert parsed == "B" and refs["answer_idx"] == 0
    else:
        assert parsed == M.postprocess_prediction(prediction) and refs == metadata["answers"]


def test_synthetic_captioning_scores_caption_recall(setup, tmp_path):
    """The captioning preset scores each caption with caption_recall against the record's caption."""
    from molmo_jax.data.synthetic import KINDS, SHAPE_COLOURS
    from molmo_jax.eval.evaluate import evaluate

    c, model, processor = setup
    cap = _eval_config("synthetic_captioning")
    for key in ("checkpoint", "data_dir", "batch_size"):
        cap[key] = c[key]
    cap.max_examples = 3
    cap.max_new_tokens = 8
    results = evaluate(cap, tmp_path, model=model, processor=processor, progress=False)
    rows = _rows(tmp_path / "pixmo_cap" / "predictions.jsonl")
    assert results["pixmo_cap"]["metric"] == "caption_recall" and len(rows) == 3
    for row in rows:
        assert "In total there are" in row["references"]  # the synthetic scene's dense caption
        expected = M.caption_recall(row["prediction"], row["references"], SHAPE_COLOURS, KINDS)
        assert row["scores"]["caption_recall"] == expected
    mean = np.mean([r["scores"]["caption_recall"] for r in rows])
    assert results["pixmo_cap"]["metrics"]["caption_recall"] == pytest.approx(mean)


def test_sharded_evaluation_gives_the_same_predictions(setup, tmp_path):
    from molmo_jax.eval.evaluate import evaluate

    c, _, processor = setup
    preds = {}
    for name, shape in (("single", {}), ("sharded", {"fsdp": 2, "tensor": 2})):
        run = _eval_config("synthetic_counting")
        for key in ("checkpoint", "data_dir", "batch_size"):
            run[key] = c[key]
        run.max_examples, run.max_new_tokens = 2, 4
        for axis, size in shape.items():
            run.mesh[axis] = size
        evaluate(run, tmp_path / name, processor=processor, progress=False)  # loads the checkpoint itself
        preds[name] = [
            r["prediction"] for r in _rows(tmp_path / name / "pixmo_count_counting" / "predictions.jsonl")
        ]
    assert len(preds["single"]) == 2 and preds["sharded"] == preds["single"]


def test_heldout_loss_is_the_mean_nll_of_the_answer_tokens(setup):
    """Batched, padded and jitted, it equals a per-example numpy log-softmax over the scored tokens;
    blanking the images changes it; an empty selection is an error naming the task."""
    import dataclasses

    import jax.numpy as jnp
    from flax import nnx

    from molmo_jax.data import prepare
    from molmo_jax.data.pipeline import IMAGE_KEYS, fit_batch, resolve_task
    from molmo_jax.eval.heldout_loss import heldout_loss
    from molmo_jax.model.config import tiny
    from molmo_jax.model.molmo import Molmo

    c, _, processor = setup
    # fan_in connector weights: at this width the original N(0, 0.02) leaves images without effect
    cfg = tiny()
    model = Molmo(
        dataclasses.replace(cfg, connector=dataclasses.replace(cfg.connector, init="fan_in")),
        rngs=nnx.Rngs(0),
    )
    task, seq, crops = "pixmo_count_counting", int(c.sequence_length), int(c.max_crops) + 1
    kw = dict(batch_size=4, sequence_length=seq, max_crops=crops, split=c.split)
    got = heldout_loss(model, processor, c.data_dir, task, **kw)  # 6 examples: the 2nd batch is padded

    resolved = resolve_task(task, c.data_dir)
    source = prepare.open_prepared(c.data_dir, resolved.prepared, c.split)
    icfg = processor.image_config
    shape = (seq, crops, icfg.patches_per_crop, icfg.patch_dim, icfg.tokens_per_crop)
    nll, n = 0.0, 0
    for i in range(len(source)):
        rs = np.random.RandomState(i)
        ex = processor.process_example(resolved(source[i], rs), for_inference=False, rng=rs)
        b = fit_batch([ex], 1, shape)
        kwargs = {k: jnp.asarray(b[k]) for k in (*IMAGE_KEYS, "position_ids") if k in b}
        logits = np.asarray(model(jnp.asarray(b["input_ids"]), **kwargs).logits[0], np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        logp -= logits.max(-1, keepdims=True)
        scored = np.flatnonzero(b["loss_masks"][0] > 0)
        nll -= logp[scored, b["target_tokens"][0][scored]].sum()
        n += len(scored)
    assert got["examples"] == len(source) == NUM and got["tokens"] == n > 0
    assert got["loss"] == pytest.approx(nll / n, rel=1e-4)

    blank = heldout_loss(model, processor, c.data_dir, task, blank_images=True, **kw)
    assert blank["tokens"] == n and abs(blank["loss"] - got["loss"]) > 1e-4
    with pytest.raises(ValueError, match=task):
        heldout_loss(model, processor, c.data_dir, task, max_examples=0, **kw)
