"""`python -m molmo_jax.cli.generate` end to end on the golden tiny checkpoint and a golden image."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, require_golden
from helpers import golden_tiny_checkpoint
from PIL import Image

import molmo_jax
from molmo_jax.cli.generate import draw_path, report


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return golden_tiny_checkpoint(tmp_path_factory.mktemp("qwen2_tiny_ckpt"))


@pytest.mark.golden
def test_cli_generate_end_to_end(checkpoint, tmp_path):
    image = require_golden("preprocess", "chelsea_451x300", "image.png")
    draw = tmp_path / "drawn.png"
    cmd = [
        sys.executable,
        "-m",
        "molmo_jax.cli.generate",
        f"--checkpoint={checkpoint}",
        f"--image={image}",
        "--prompt=Point to the cat.",
        "--max_new_tokens=6",
        f"--draw={draw}",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr[-3000:]

    model = molmo_jax.load_pretrained(checkpoint)
    processor = molmo_jax.MolmoProcessor.from_pretrained(checkpoint)
    assert processor.tokenizer.image_patch_id == 514  # padded to vocab_size 512: <im_patch> = 512 + 2
    expected = molmo_jax.generate(model, processor, [str(image)], ["Point to the cat."], max_new_tokens=6)
    assert len(expected.token_ids[0]) >= 1
    assert run.stdout.splitlines()[0] == expected.texts[0]
    drawn = Image.open(draw)
    assert drawn.size == Image.open(image).size


@pytest.mark.golden
def test_cli_batch_and_bad_input(checkpoint, tmp_path):
    image = require_golden("preprocess", "tiny_50x40", "image.png")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    base = [
        sys.executable,
        "-m",
        "molmo_jax.cli.generate",
        f"--checkpoint={checkpoint}",
        "--max_new_tokens=3",
    ]
    run = subprocess.run(
        base + [f"--image={image}", "--prompt=What is this?", "--image=none", "--prompt=Hello"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO_ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("[0] What is this?") and "[1] Hello" in run.stdout
    missing = subprocess.run(
        base + [f"--image={tmp_path / 'nope.png'}", "--prompt=hi"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO_ROOT,
    )
    assert missing.returncode != 0 and "nope.png: no such file" in missing.stderr


def test_report_prints_pixel_points_and_draws(tmp_path, capsys):
    image = np.zeros((100, 200, 3), np.uint8)
    text = '<points x1="10.0" y1="20.0" x2="50.0" y2="50.0" alt="cats">cats</points>'
    report(
        prompt="Point to the cats.", text=text, image=image, draw=str(tmp_path / "p.png"), index=0, total=1
    )
    out = capsys.readouterr().out
    assert "(20.0, 20.0); (100.0, 50.0)" in out
    drawn = np.asarray(Image.open(tmp_path / "p.png"))
    assert drawn[20, 20].any() and drawn[50, 100].any() and not drawn[90, 5].any()
    assert draw_path("out.png", 2, 3).name == "out-2.png"
