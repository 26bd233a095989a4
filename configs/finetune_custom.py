"""Copy me: fine-tune a released or stage-2 checkpoint on your own JSONL data.

    python -m molmo_jax.cli.prepare jsonl --input mine.jsonl --out data/ --name my_dataset
    python -m molmo_jax.cli.train --config=configs/finetune_custom.py:molmo_7b_d --workdir=runs/ft \
        --config.model.checkpoint=path/to/Molmo-7B-D-0924 --config.data.data_dir=data/
"""

from molmo_jax.train.config import base_config


def get_config(arg: str = "molmo_7b_d"):
    c = base_config("finetune", arg)
    c.data.tasks = ["my_dataset"]  # the --name given to `prepare jsonl`
    c.data.sequence_length = 1536
    c.train.steps = 2000
    c.train.checkpoint_every = 500
    return c
