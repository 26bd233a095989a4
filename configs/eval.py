"""Evaluation presets, one per benchmark / task (MOLMO_SPEC §10).

Run:
    python -m molmo_jax.cli.evaluate --config=configs/eval.py:pixmo_count --workdir=runs/eval \
        --config.checkpoint=path/to/Molmo-7B-D-0924 --config.data_dir=data/ [--overwrite] [--blank_images]

Presets (``:ARG``): pixmo_count, pixmo_points_eval, pixmo_clocks, countbench (low-res: 12 crops,
sequence 1536) and chart_qa, doc_qa, info_qa, text_vqa, vqa2, ai2d, real_world_qa (high-res: 36 crops,
sequence 4096), plus ``synthetic`` (the demo's three synthetic tasks on a tiny model: counting,
pointing, clocks; 2 crops, sequence 384, overlap margins (2, 2) for 84-px crops).

Fields: ``task`` (comma-separated task names; each writes ``WORKDIR/<task>/``), ``checkpoint`` (HF
folder with its tokenizer), ``tokenizer`` (optional other tokenizer folder), ``data_dir`` (prepared
datasets), ``split``, ``max_crops``, ``sequence_length``, ``max_new_tokens`` (0: the task's default,
``molmo_jax.eval.evaluate.TASK_DEFAULTS``), ``metric`` ("": the task's default), ``batch_size``,
``max_examples`` (0: all), ``seed`` (per-example rng = seed + index), ``dtype``, ``overlap_margins``
(empty: the checkpoint's), ``report_examples``, ``clock_test_mode``.
"""

import ml_collections

# preset -> (task, metric, max_new_tokens, high_res, split)
PRESETS = {
    "pixmo_count": ("pixmo_count_counting", "count", 192, False, "test"),
    "pixmo_points_eval": ("pixmo_points_eval", "pointing", 192, False, "test"),
    "pixmo_clocks": ("pixmo_clocks", "clock", 24, False, "validation"),
    "countbench": ("countbench_qa", "count", 192, False, "test"),
    "chart_qa": ("chart_qa", "relaxed_correctness", 12, True, "test"),
    "doc_qa": ("doc_qa", "anls", 12, True, "validation"),
    "info_qa": ("info_qa", "anls", 12, True, "validation"),
    "text_vqa": ("text_vqa", "vqa_score", 12, True, "validation"),
    "vqa2": ("coco_2014_vqa", "vqa_score", 12, True, "validation"),
    "ai2d": ("ai2_diagram", "mc", 12, True, "test"),
    "real_world_qa": ("real_world_qa", "em", 12, True, "test"),
}


def get_config(arg: str = "pixmo_count"):
    c = ml_collections.ConfigDict()
    c.checkpoint = ""
    c.tokenizer = ""
    c.data_dir = ""
    c.dtype = "float32"
    c.seed = 6198
    c.batch_size = 8
    c.max_examples = 0
    c.report_examples = 16
    c.clock_test_mode = False
    c.overlap_margins = ()
    # Parameters sharded over this mesh (all 1: one device), e.g. --config.mesh.fsdp=4 --config.mesh.tensor=2.
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, expert=1))
    synthetic = {
        "synthetic": "pixmo_count_counting,pixmo_points_eval,pixmo_clocks",
        "synthetic_counting": "pixmo_count_counting",
        "synthetic_pointing": "pixmo_points_eval",
        "synthetic_clocks": "pixmo_clocks",
        "synthetic_captioning": "pixmo_cap",
    }
    if arg in synthetic:
        c.task = synthetic[arg]
        c.metric = ""  # per task: count, pointing, clock
        c.max_new_tokens = 0  # per task defaults
        c.split = "validation"
        c.max_crops = 2
        c.sequence_length = 384
        c.overlap_margins = (2, 2)
        c.batch_size = 16
        return c
    if arg not in PRESETS:
        raise ValueError(
            f"unknown eval preset {arg!r}; known: {', '.join(sorted(PRESETS) + sorted(synthetic))}"
        )
    task, metric, tokens, high_res, split = PRESETS[arg]
    c.task = task
    c.metric = metric
    c.max_new_tokens = tokens
    c.split = split
    c.max_crops = 36 if high_res else 12
    c.sequence_length = 4096 if high_res else 1536
    return c
