"""Stage 2: multitask fine-tuning from a stage-1 checkpoint (MOLMO_SPEC §8.3).

Run:
    python -m molmo_jax.cli.train --config=configs/stage2_multitask.py:molmo_7b_d --workdir=runs/s2 \
        --config.model.checkpoint=runs/s1/hf --config.data.data_dir=data/
(`--config.model.checkpoint` may also be a released HF checkpoint folder.)
"""

from molmo_jax.train.config import base_config, use_tiny_model

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
    if arg == "tiny":  # from a tiny stage-1 export (--config.model.checkpoint=RUN/hf)
        use_tiny_model(c, lr=dict(connector=1e-3, vit=2e-4, llm=2e-4))
        c.data.tasks = ["pixmo_points", "pixmo_count_counting", "pixmo_ask_model_anything"]
    return c
