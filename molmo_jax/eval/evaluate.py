"""The evaluator: a checkpoint + a prepared evaluation set -> per-example predictions, scores, metrics
and an HTML report (MOLMO_SPEC section 10).

For every task of ``config.task`` (comma-separated names), under ``workdir/<task>/``::

    predictions.jsonl   one line per example, appended batch by batch (a killed run loses at most the
                        batch in flight): id, index, prompt, prediction (decoded text), references,
                        parsed (the answer the metric read), scores (per-example metric values),
                        image_size, dataset, record_index
    metrics.json        aggregate over every line of predictions.jsonl: the mean of each per-example
                        metric (float32-faithful, as the original reports), plus for counting the
                        per-count accuracy and histograms of true and predicted counts
    run.json            the settings of the run (checkpoint, blank_images, ...); a re-run with other
                        settings into the same folder is refused unless ``overwrite``
    report.html         metric table and a sample of examples (thumbnail, question, prediction,
                        reference; true (green) and predicted (red) points drawn for pointing tasks)

and ``workdir/metrics.json`` with every task's aggregate.

**Data.** Records come from the prepared dataset (``molmo_jax.data.prepare``) of the task in order
(no shuffle, one pass). Example ``i`` is built with ``np.random.RandomState(seed + i)`` (the original
eval's per-example rng, seed 6198: style prefix draw and template choice), processed with
``for_inference=True`` and batched with the pipeline's :func:`~molmo_jax.data.pipeline.fit_batch`
into static shapes (``batch_size`` x ``sequence_length``, ``max_crops + 1`` crops; the last batch is
padded with empty rows), so one compiled prefill serves the whole run. The Grain pipeline is not used
because it drops each example's ``metadata`` (references, masks, image size), which scoring needs.

**Resume.** Ids already in ``predictions.jsonl`` are skipped before their image is even loaded;
``overwrite=True`` deletes the task's files first. Decoding is greedy, so a resumed run gives the
same lines as an uninterrupted one.

**Blank-image control.** ``blank_images=True`` replaces every image by a black image of the same
size before preprocessing (the demo's "does the model look at the image" control).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from molmo_jax.eval import metrics as M

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
RUN_INFO = "run.json"
REPORT = "report.html"

# metric name -> per-example scorer. VqaEval metrics post-process the prediction first.
METRIC_NAMES = (
    "vqa_score",
    "anls",
    "relaxed_correctness",
    "em",
    "mc",
    "count",
    "pointing",
    "clock",
    "caption_recall",
)

# Task defaults (MOLMO_SPEC 10.1/10.2): metric and max_new_tokens.
TASK_DEFAULTS: dict[str, tuple[str, int]] = {
    "pixmo_count_counting": ("count", 192),
    "pixmo_count": ("count", 192),
    "countbench_qa": ("count", 192),
    "pixmo_points_eval": ("pointing", 192),
    # The original's default of 12 cuts "The time shown is 10:07:09" for digit-split tokenizers.
    "pixmo_clocks": ("clock", 24),
    "pixmo_cap": ("caption_recall", 192),  # synthetic scenes: colour + shape of every object
    "chart_qa": ("relaxed_correctness", 12),
    "doc_qa": ("anls", 12),
    "info_qa": ("anls", 12),
    "text_vqa": ("vqa_score", 12),
    "coco_2014_vqa": ("vqa_score", 12),
    "ai2_diagram": ("mc", 12),
    "real_world_qa": ("em", 12),
}


# ----------------------------------------------------------------------------------------------
# Scoring


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def gt_points_pixels(metadata: Mapping[str, Any]) -> np.ndarray:
    """The true points of a pointing example in pixels ``[N, 2]`` (percent data scaled by the size)."""
    pts = np.asarray(metadata.get("points", []), np.float64).reshape(-1, 2)
    if metadata.get("point_units") == "percent":
        w, h = metadata["image_size"]
        pts = pts * np.array([w / 100.0, h / 100.0])
    return pts


def references_of(metric: str, metadata: Mapping[str, Any]) -> Any:
    """What the metric compares against, as stored in ``predictions.jsonl``."""
    if metric in ("vqa_score", "anls", "relaxed_correctness", "em"):
        answers = metadata.get("answers")
        if answers is None and metadata.get("answer") is not None:
            answers = [metadata["answer"]]
        if answers is None:
            raise ValueError("the example has no reference answers")
        return [answers] if isinstance(answers, str) else list(answers)
    if metric == "mc":
        return {
            "options": list(metadata["options"]),
            "option_names": list(metadata.get("option_names") or metadata["options"]),
            "answer_idx": int(metadata["answer_idx"]),
        }
    if metric == "count":
        count = metadata["count"]
        if isinstance(count, (list, tuple)):  # several labels of one image: the first one is asked
            count = count[0]
        return int(count)
    if metric == "pointing":
        return gt_points_pixels(metadata).tolist()
    if metric == "clock":
        return {k: int(metadata[k]) for k in ("hour", "minute", "second")}
    if metric == "caption_recall":
        if not metadata.get("caption"):
            raise ValueError("the example has no reference caption")
        return metadata["caption"]
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRIC_NAMES}")


def score_example(
    metric: str, prediction: str, metadata: Mapping[str, Any], *, clock_test_mode: bool = False
) -> tuple[Any, Any, dict[str, float | bool]]:
    """One example -> ``(parsed answer, references, per-example scores)`` with the functions of
    :mod:`molmo_jax.eval.metrics`."""
    refs = references_of(metric, metadata)
    if metric in ("vqa_score", "anls", "relaxed_correctness", "em"):
        parsed = M.postprocess_prediction(prediction)
        return parsed, refs, {metric: M.vqa_eval_score(metric, prediction, refs)}
    if metric == "mc":
        choice = M.select_mc_option(M.postprocess_prediction(prediction), refs["option_names"])
        ok = M.mc_score(prediction, refs["option_names"], refs["answer_idx"])
        return refs["option_names"][choice], refs, {"mc": ok}
    if metric == "count":
        return M.parse_count(prediction), refs, M.count_scores(prediction, refs)
    if metric == "pointing":
        w, h = metadata["image_size"]
        masks = [np.asarray(m, dtype=bool) for m in (metadata.get("masks") or [])]
        parsed = [list(p) for p in M.extract_points(prediction.strip(), w, h)]
        return parsed, refs, M.pointing_scores(prediction, refs, masks, (w, h))
    if metric == "clock":
        scores = M.clock_scores(prediction, **refs, is_test=clock_test_mode)
        if refs["hour"] >= 0:  # a readable clock: also how many minutes off the answer is
            off = M.clock_minutes_off(prediction, **refs)
            scores["within_2_minutes"] = off is not None and off <= 2
        return prediction.strip(), refs, scores
    if metric == "caption_recall":
        from molmo_jax.data.synthetic import KINDS, SHAPE_COLOURS

        parsed = {f"{c} {k}": n for (c, k), n in M.caption_objects(prediction, SHAPE_COLOURS, KINDS).items()}
        return parsed, refs, {"caption_recall": M.caption_recall(prediction, refs, SHAPE_COLOURS, KINDS)}
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRIC_NAMES}")


def aggregate(metric: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``metrics.json`` content for the lines of ``predictions.jsonl``."""
    scores = [r["scores"] for r in rows]
    out: dict[str, Any] = {"num_examples": len(rows)}
    if metric == "count":
        gts = [int(r["references"]) for r in rows]
        out["metrics"] = M.count_aggregate(scores, gts) if rows else {}
        out["gt_counts"] = {str(k): v for k, v in sorted(Counter(gts).items())}
        preds = Counter("none" if r["parsed"] is None else str(r["parsed"]) for r in rows)
        out["predicted_counts"] = dict(sorted(preds.items(), key=lambda kv: (kv[0] == "none", kv[0])))
    else:
        out["metrics"] = M.aggregate_scores(scores)
    return out


# ----------------------------------------------------------------------------------------------
# Examples and batches


def blank_like(image) -> np.ndarray:
    """A black uint8 RGB image of the same size as ``image`` (any form ``load_image`` accepts)."""
    from molmo_jax.preprocess.image import load_image

    return np.zeros_like(load_image(image))


def _prompt_text(tokenizer, input_ids: np.ndarray) -> str:
    special = {
        tokenizer.image_start_id,
        tokenizer.image_end_id,
        tokenizer.image_patch_id,
        tokenizer.image_col_id,
        getattr(tokenizer, "image_placeholder_id", None),
    }
    ids = [int(i) for i in input_ids if int(i) >= 0 and int(i) not in special]
    return tokenizer.decode(ids).strip()


def read_predictions(path: Path) -> list[dict]:
    """The complete lines of a ``predictions.jsonl`` (a line cut by a crash is dropped)."""
    rows = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def _rewrite_complete(path: Path, rows: Sequence[dict]) -> None:
    """Drop a partial trailing line so appends start on a fresh line."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def task_settings(config, task: str) -> tuple[str, int]:
    """(metric, max_new_tokens) of a task: the config's values, else the task defaults."""
    default_metric, default_tokens = TASK_DEFAULTS.get(task, ("", 12))
    metric = config.get("metric") or default_metric
    if not metric:
        raise ValueError(
            f"no default metric for task {task!r}: set config.metric ({', '.join(METRIC_NAMES)})"
        )
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRIC_NAMES}")
    return metric, int(config.get("max_new_tokens") or default_tokens)


def build_processor(config):
    """The checkpoint's processor with the config's crop budget (and overlap margins, if given)."""
    from molmo_jax.preprocess.processor import MolmoProcessor

    overrides: dict[str, Any] = {"max_crops": int(config.max_crops)}
    if config.get("overlap_margins"):
        overrides["overlap_margins"] = tuple(config.overlap_margins)
    return MolmoProcessor.from_pretrained(
        config.checkpoint, tokenizer=config.get("tokenizer") or None, **overrides
    )


def eval_mesh(config):
    """The config's (data, fsdp, tensor, expert) mesh, or None for one device."""
    from molmo_jax.model.sharding import make_mesh

    shape = {k: int(v) for k, v in dict(config.get("mesh") or {}).items()}
    return make_mesh(shape) if any(v != 1 for v in shape.values()) else None


def load_model(config, mesh=None):
    """The checkpoint's model; with a mesh its parameters are placed sharded as they are read."""
    import jax.numpy as jnp

    from molmo_jax.checkpoints.hf import load_pretrained

    return load_pretrained(config.checkpoint, jnp.dtype(config.get("dtype") or "float32"), mesh=mesh)


# ----------------------------------------------------------------------------------------------
# The evaluation loop


def evaluate_task(
    config,
    task: str,
    out_dir: str | os.PathLike,
    *,
    model=None,
    processor=None,
    generator=None,
    overwrite: bool = False,
    blank_images: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate one task into ``out_dir`` (files in the module docstring); returns ``metrics.json``'s
    content plus ``generated_batches`` / ``skipped`` (examples already done) of this call."""
    from molmo_jax.data import prepare
    from molmo_jax.data.pipeline import IMAGE_KEYS, fit_batch, resolve_task
    from molmo_jax.infer.decoding import SamplingConfig
    from molmo_jax.infer.generate import generator_for

    metric, max_new_tokens = task_settings(config, task)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path = out_dir / PREDICTIONS
    run_info = {
        "task": task,
        "metric": metric,
        "checkpoint": str(config.checkpoint),
        "data_dir": str(config.data_dir),
        "split": config.split,
        "max_crops": int(config.max_crops),
        "sequence_length": int(config.sequence_length),
        "max_new_tokens": max_new_tokens,
        "seed": int(config.seed),
        "blank_images": bool(blank_images),
    }
    if overwrite:
        for name in (PREDICTIONS, METRICS, RUN_INFO, REPORT):
            (out_dir / name).unlink(missing_ok=True)
    elif (out_dir / RUN_INFO).exists():
        old = json.loads((out_dir / RUN_INFO).read_text())
        changed = [k for k in run_info if old.get(k) != run_info[k] and k != "data_dir"]
        if changed:
            diff = ", ".join(f"{k}={old.get(k)!r}" for k in changed)
            raise ValueError(
                f"{out_dir} holds a run with other settings ({diff}); pass overwrite=True (--overwrite) "
                "or another workdir"
            )
    (out_dir / RUN_INFO).write_text(json.dumps(run_info, indent=2))

    done_rows = read_predictions(pred_path)
    _rewrite_complete(pred_path, done_rows)
    done = {r["id"] for r in done_rows}

    resolved = resolve_task(task, config.data_dir)
    source = prepare.open_prepared(config.data_dir, resolved.prepared, config.split)
    total = len(source)
    if config.get("max_examples"):
        total = min(total, int(config.max_examples))
    todo = [i for i in range(total) if f"{task}/{i}" not in done]

    if processor is None:
        processor = build_processor(config)
    if generator is None:
        if model is None:
            model = load_model(config)
        generator = generator_for(model)
    eos = processor.tokenizer.eos_id
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    icfg = processor.image_config
    batch_size = int(config.batch_size)
    shape = (
        int(config.sequence_length),
        int(config.max_crops) + 1,
        icfg.patches_per_crop,
        icfg.patch_dim,
        icfg.tokens_per_crop,
    )

    def make(i: int):
        record = source[i]
        rs = np.random.RandomState(int(config.seed) + i)
        example = resolved(record, rs)
        if blank_images and example.get("image") is not None:
            example = dict(example, image=blank_like(example["image"]))
        out = processor.process_example(example, for_inference=True, rng=rs)
        meta = out.pop("metadata")
        meta.setdefault("point_units", record.get("point_units"))
        if metric == "caption_recall":  # the reference caption of a PixMo-Cap record
            annotations = record.get("annotations") or [record]
            meta.setdefault("caption", annotations[0].get("caption"))
        ident = {
            "id": f"{task}/{i}",
            "index": i,
            "dataset": record.get("dataset", resolved.prepared),
            "record_index": record.get("record_index", i),
        }
        return ident, out, meta

    stats = {"truncated_examples": 0}
    batches = 0
    bar = _progress(total, task, progress, initial=total - len(todo))
    chunks = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
    # One thread prepares the next batch (image decoding, crops) while the model decodes this one.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        with open(pred_path, "a", encoding="utf-8") as f:
            pending = pool.submit(lambda c: [make(i) for i in c], chunks[0]) if chunks else None
            for n in range(len(chunks)):
                items = pending.result()
                if n + 1 < len(chunks):
                    pending = pool.submit(lambda c: [make(i) for i in c], chunks[n + 1])
                batch = fit_batch([x[1] for x in items], batch_size, shape)
                stats["truncated_examples"] += int((batch["num_truncated_tokens"] > 0).sum())
                model_batch = {k: batch[k] for k in ("input_ids", *IMAGE_KEYS)}
                gen = generator.generate(model_batch, eos, sampling)
                batches += 1
                for row, (ident, ex, meta) in enumerate(items):
                    ids = gen.tokens[row, : gen.lengths[row]].tolist()
                    text = processor.tokenizer.decode(ids)
                    parsed, refs, scores = score_example(
                        metric, text, meta, clock_test_mode=bool(config.get("clock_test_mode"))
                    )
                    line = {
                        **ident,
                        "prompt": _prompt_text(processor.tokenizer, ex["input_ids"]),
                        "prediction": text,
                        "references": refs,
                        "parsed": parsed,
                        "scores": scores,
                        "image_size": meta.get("image_size"),
                    }
                    f.write(json.dumps(_jsonable(line), ensure_ascii=False) + "\n")
                f.flush()
                bar.update(len(items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()

    rows = read_predictions(pred_path)
    result = aggregate(metric, rows)
    result.update(task=task, metric=metric, blank_images=bool(blank_images), **stats)
    (out_dir / METRICS).write_text(json.dumps(_jsonable(result), indent=2))
    try:
        write_report(
            out_dir,
            rows,
            result,
            source=source,
            blank_images=blank_images,
            num_examples=int(config.get("report_examples", 16)),
        )
    except Exception as e:  # a report must never lose the predictions
        log.warning("could not write the report for %s: %s: %s", task, type(e).__name__, e)
    return dict(result, generated_batches=batches, skipped=total - len(todo))


def evaluate(
    config,
    workdir: str | os.PathLike,
    *,
    model=None,
    processor=None,
    overwrite: bool = False,
    blank_images: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Evaluate every task of ``config.task`` (comma-separated) into ``workdir/<task>/``; writes
    ``workdir/metrics.json`` with each task's aggregate and returns it."""
    from molmo_jax.infer.generate import generator_for

    tasks = [t.strip() for t in str(config.task).split(",") if t.strip()]
    if not tasks:
        raise ValueError("config.task is empty")
    if not config.checkpoint and model is None:
        raise ValueError("config.checkpoint is required (--config.checkpoint=DIR)")
    if not config.data_dir:
        raise ValueError("config.data_dir is required (--config.data_dir=DIR)")
    workdir = Path(workdir)
    processor = processor if processor is not None else build_processor(config)
    mesh = eval_mesh(config)
    model = model if model is not None else load_model(config, mesh)
    generator = generator_for(model, mesh)
    results = {}
    for task in tasks:
        results[task] = evaluate_task(
            config,
            task,
            workdir / task,
            processor=processor,
            generator=generator,
            overwrite=overwrite,
            blank_images=blank_images,
            progress=progress,
        )
    summary = {
        t: {k: r[k] for k in ("metric", "num_examples", "metrics", "blank_images")}
        for t, r in results.items()
    }
    (workdir / METRICS).write_text(json.dumps(_jsonable(summary), indent=2))
    return results


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", initial=initial)


# ----------------------------------------------------------------------------------------------
# Report


def _thumbnail_uri(image: np.ndarray, size: int = 256) -> str:
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    img.thumbnail((size, size))
    if max(img.size) < size // 2:  # small images (synthetic data) are enlarged, pixels kept sharp
        k = size // max(img.size)
        img = img.resize((img.size[0] * k, img.size[1] * k), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return html.escape(
        json.dumps(_jsonable(value), ensure_ascii=False) if not isinstance(value, str) else value
    )


def metric_table_html(result: Mapping[str, Any]) -> str:
    """The aggregate metrics as an HTML table (metric, value)."""
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(float(v))}</td></tr>"
        for k, v in result.get("metrics", {}).items()
    )
    return f'<table class="metrics"><tr><th>metric</th><th>value</th></tr>{rows}</table>'


def write_report(
    out_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    result: Mapping[str, Any],
    *,
    source=None,
    blank_images: bool = False,
    num_examples: int = 16,
    image_loader: Callable[[int], Any] | None = None,
) -> Path:
    """``report.html``: the metric table (plus count histograms) and up to ``num_examples`` evenly
    spaced examples with a thumbnail of the image the model saw, question, prediction, parsed answer,
    reference and scores; pointing examples show true (green) and predicted (red) points."""
    from molmo_jax.preprocess.image import load_image
    from molmo_jax.preprocess.pointing import draw_points

    task, metric = result.get("task", ""), result.get("metric", "")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(task)} evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
        "pre{white-space:pre-wrap;margin:0;max-width:40em}</style></head><body>",
        f"<h1>{html.escape(task)}</h1>",
        f"<p>metric: <b>{html.escape(metric)}</b>; {result.get('num_examples', 0)} examples"
        f"{'; <b>blank-image control</b>' if blank_images else ''}"
        f"; {result.get('truncated_examples', 0)} truncated prompts in the last run</p>",
        metric_table_html(result),
    ]
    for key in ("gt_counts", "predicted_counts"):
        if key in result:
            cells = "".join(f"<td>{html.escape(k)}: {v}</td>" for k, v in result[key].items())
            parts.append(f"<h3>{key.replace('_', ' ')}</h3><table><tr>{cells}</tr></table>")
    if rows and num_examples > 0:
        pick = sorted({int(round(x)) for x in np.linspace(0, len(rows) - 1, min(num_examples, len(rows)))})
        parts.append(
            "<h2>Examples</h2><table><tr><th>image</th><th>id</th><th>prompt</th><th>prediction</th>"
            "<th>parsed</th><th>reference</th><th>scores</th></tr>"
        )
        for j in pick:
            r = rows[j]
            thumb = ""
            try:
                if image_loader is not None:
                    image = image_loader(int(r["index"]))
                elif source is not None:
                    rec = source[int(r["index"])]
                    image = rec.get("image") if rec.get("image") is not None else rec.get("image_path")
                else:
                    image = None
                if image is not None:
                    array = load_image(image)
                    if blank_images:
                        array = np.zeros_like(array)
                    if metric == "pointing":
                        img = draw_points(array, r["references"], fill=(32, 200, 32))
                        img = draw_points(img, r["parsed"] or [], fill=(255, 32, 32))
                        array = np.asarray(img)
                    thumb = f"<img src='{_thumbnail_uri(array)}'>"
            except Exception as e:  # a broken image must not lose the report
                thumb = f"(no image: {html.escape(type(e).__name__)})"
            parts.append(
                "<tr>"
                f"<td>{thumb}</td><td>{html.escape(str(r['id']))}</td>"
                f"<td><pre>{html.escape(str(r['prompt']))}</pre></td>"
                f"<td><pre>{html.escape(str(r['prediction']))}</pre></td>"
                f"<td><pre>{_fmt(r['parsed'])}</pre></td>"
                f"<td><pre>{_fmt(r['references'])}</pre></td>"
                f"<td><pre>{_fmt(r['scores'])}</pre></td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    path = Path(out_dir) / REPORT
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
