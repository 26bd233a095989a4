"""Copy me: fine-tune a released or stage-2 checkpoint on your own JSONL data, fully or with LoRA.

Data: one JSON object per line, one image each (full schema: `molmo_jax/data/jsonl.py`; an example
in `configs/examples/my_dataset.jsonl`). `image` is a path relative to the JSONL file, an absolute
path or a file:// URL; each line has exactly one of `messages`, `conversations` or `label` + `points`:

    {"image": "imgs/cat.jpg", "messages": ["What is this?", "A cat."]}
    {"image": "imgs/kitchen.jpg", "conversations": [["Q1", "A1"], ["Q2", "A2"]], "weight": 0.5}
    {"image": "/data/shelf.png", "label": "red cup", "points": [[120.5, 80.0], [300, 210]]}
    {"image": "shelf2.png", "label": "red cup", "points": [[25.1, 40.0]], "point_units": "percent",
     "style": "point_count"}

Points are [x, y] in pixels of the image (default) or, with "point_units": "percent", 0-100 of its
width / height; the style is "pointing" (default: "Point to ...") or "point_count" (count, then point).
Optional keys: "style" (a style prefix word for messages; default "demo"), "weight" (loss weight).

Run (the `:ARG` is `PRESET[,lora]`; `lora` turns on `config.lora.enabled`, as
`--config.lora.enabled=True` does):

    python -m molmo_jax.cli.prepare jsonl --input mine.jsonl --out data/ --name my_dataset
    # full fine-tuning (fp32 weights + AdamW on every group)
    python -m molmo_jax.cli.train --config=configs/finetune_custom.py:molmo_7b_d --workdir=runs/ft \\
        --config.model.checkpoint=path/to/Molmo-7B-D-0924 --config.data.data_dir=data/
    # LoRA: bf16 frozen base, rank-16 adapters on the LLM's attention + MLP (WORKDIR/adapters)
    python -m molmo_jax.cli.train --config=configs/finetune_custom.py:molmo_7b_d,lora --workdir=runs/lora \\
        --config.model.checkpoint=path/to/Molmo-7B-D-0924 --config.data.data_dir=data/ \\
        [--config.lora.rank=32] [--config.lora.targets='("all_linear",)'] [--config.lora.export_merged=True]
    # your data mixed with prepared PixMo tasks, 3:1 (tasks outside the recipe's groups need weights)
    python -m molmo_jax.cli.train --config=configs/finetune_custom.py:molmo_7b_d --workdir=runs/mix \\
        --config.model.checkpoint=path/to/Molmo-7B-D-0924 --config.data.data_dir=data/ \\
        --config.data.tasks='("my_dataset", "pixmo_points")' \\
        --config.data.task_weights='{"my_dataset": 3, "pixmo_points": 1}'
    # memory per device of one step, nothing allocated (8 simulated devices: a v5e-8-like fsdp mesh)
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m molmo_jax.cli.train \\
        --config=configs/finetune_custom.py:molmo_7b_d,lora --workdir=/tmp/x --dry_run_memory \\
        --config.mesh.data=1 --config.mesh.fsdp=8 --config.data.batch_size=8

A LoRA run checkpoints only adapters + their optimizer state (+ the data position) and resumes like
a full run. At the end it writes WORKDIR/adapters (`adapter_model.safetensors`,
`adapter_config.json`) and, with `lora.export_merged`, WORKDIR/hf: the base with the adapters folded
in (also `python -m molmo_jax.cli.merge_lora --base CKPT --adapters WORKDIR/adapters --out DIR`).

Presets: molmoe_1b, molmo_7b_o, molmo_7b_d, molmo_72b, and `tiny`: CPU-sized settings for a small
HF checkpoint with 336-px crops (the tests' qwen2_tiny; set --config.data.crop_size=84 for a tiny
stage-2 export).
"""

from molmo_jax.train.config import base_config, use_tiny_model


def get_config(arg: str = "molmo_7b_d"):
    preset, *options = [a.strip() for a in arg.split(",")]
    unknown = [o for o in options if o != "lora"]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {arg!r}; use PRESET or PRESET,lora")
    c = base_config("finetune", preset)
    c.data.tasks = ["my_dataset"]  # the --name given to `prepare jsonl`
    c.data.sequence_length = 1536
    c.train.steps = 2000
    c.train.checkpoint_every = 500
    c.lora.enabled = "lora" in options
    if preset == "tiny":
        use_tiny_model(c, lr=dict(connector=1e-3, vit=2e-4, llm=2e-4))
        c.data.crop_size = 336
        c.data.overlap_margins = (4, 4)
        c.data.max_crops = 1
        c.data.sequence_length = 512
        c.train.steps = 40
        c.train.checkpoint_every = 20
        c.lora.base_dtype = "float32"
        c.lora.rank = 8
        c.lora.alpha = 16.0
        c.lora.lr = 3e-3
        c.lora.warmup = 5
    return c
