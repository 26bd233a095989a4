"""Stage 1: dense-caption pre-training (PixMo-Cap captions + transcripts), MOLMO_SPEC §8.2.

Run:
    python -m molmo_jax.cli.train --config=configs/stage1_caption.py:molmo_7b_d --workdir=runs/s1 \
        --config.model.checkpoint=ckpt/stage1_init --config.data.data_dir=data/
where `ckpt/stage1_init` comes from
    python -m molmo_jax.cli.convert backbone --vision CLIP_DIR --llm QWEN2_DIR --preset molmo_7b_d \
        --out ckpt/stage1_init
Presets: molmoe_1b, molmo_7b_o, molmo_7b_d, molmo_72b, tiny (random init, a tokenizer of your choice).
"""

from molmo_jax.train.config import base_config


def get_config(arg: str = "molmo_7b_d"):
    c = base_config("stage1", arg)
    c.data.tasks = ["pixmo_cap_transcript"]  # caption + one transcript per image, packed
    if arg == "tiny":
        c.model.init = "scratch"
        c.model.dtype = "float32"
        c.model.vocab_from_tokenizer = True
        c.data.sequence_length = 384
        c.data.max_crops = 2
        c.data.crop_size = 84
        c.data.overlap_margins = (2, 2)
        c.data.batch_size = 4
        c.data.num_workers = 0
        c.train.steps = 200
        c.train.checkpoint_every = 100
        c.optimizer.lr = dict(connector=2e-3, vit=5e-4, llm=5e-4)
        c.optimizer.warmup = dict(connector=20, vit=20, llm=20)
    return c
