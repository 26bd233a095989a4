"""Stage 2: multitask fine-tuning from a stage-1 checkpoint (MOLMO_SPEC §8.3).

Run:
    python -m molmo_jax.cli.train --config=configs/stage2_multitask.py:molmo_7b_d --workdir=runs/s2 \
        --config.model.checkpoint=runs/s1/hf --config.data.data_dir=data/
(`--config.model.checkpoint` may also be a released HF checkpoint folder.)
"""

from molmo_jax.train.config import base_config

# The PixMo part of the released mixture (`3.2-synthetic`): the demo and pointing groups.
STAGE2_TASKS = [
    "pixmo_ask_model_anything",
    "pixmo_cap",
    "pixmo_cap_qa",
    "pixmo_pointing_explanations",
    "pixmo_points",
    "pixmo_count",
    "pixmo_points_high_freq",
    "pixmo_points_counting",
    "pixmo_points_high_freq_counting",
    "pixmo_count_counting",
]


def get_config(arg: str = "molmo_7b_d"):
    c = base_config("stage2", arg)
    c.data.tasks = list(STAGE2_TASKS)
    c.data.sequence_length = 2304
    if arg == "tiny":
        c.model.dtype = "float32"
        c.data.tasks = ["pixmo_points", "pixmo_count_counting", "pixmo_ask_model_anything"]
        c.data.sequence_length = 384
        c.data.max_crops = 2
        c.data.crop_size = 84
        c.data.overlap_margins = (2, 2)
        c.data.batch_size = 4
        c.data.num_workers = 0
        c.train.steps = 200
        c.train.checkpoint_every = 100
        c.optimizer.lr = dict(connector=1e-3, vit=2e-4, llm=2e-4)
        c.optimizer.warmup = dict(connector=20, vit=20, llm=20)
    return c
