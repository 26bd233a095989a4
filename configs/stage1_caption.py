"""Stage 1: dense-caption pre-training (PixMo-Cap captions + transcripts), MOLMO_SPEC §8.2.

Run:
    python -m molmo_jax.cli.train --config=configs/stage1_caption.py:molmo_7b_d --workdir=runs/s1 \
        --config.model.checkpoint=ckpt/stage1_init --config.data.data_dir=data/
where `ckpt/stage1_init` comes from
    python -m molmo_jax.cli.convert backbone --vision CLIP_DIR --llm QWEN2_DIR --preset molmo_7b_d \
        --out ckpt/stage1_init
Presets: molmoe_1b, molmo_7b_o, molmo_7b_d, molmo_72b, tiny (random init, a tokenizer of your choice).
"""

from molmo_jax.train.config import base_config, use_tiny_model


def get_config(arg: str = "molmo_7b_d"):
    c = base_config("stage1", arg)
    c.data.tasks = ["pixmo_cap_transcript"]  # caption + one transcript per image, packed
    if arg == "tiny":  # random init; the vocabulary sized to --config.model.tokenizer
        use_tiny_model(c, lr=dict(connector=2e-3, vit=5e-4, llm=5e-4))
        c.model.init = "scratch"
        c.model.vocab_from_tokenizer = True
    return c
