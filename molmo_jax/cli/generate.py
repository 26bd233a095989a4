"""Ask a Molmo checkpoint about images.

    python -m molmo_jax.cli.generate --checkpoint DIR_OR_HUB_ID --image cat.jpg --prompt "Point to the cat." \
        [--max_new_tokens 200] [--draw out.png]

Several --image/--prompt pairs run as one batch. When an answer contains points they are printed
in pixel coordinates and, with --draw, drawn on the image (OUT.png; OUT-1.png, ... for a batch).
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "checkpoint folder (HF layout) or hub id", required=True)
flags.DEFINE_multi_string("image", [], "image file(s); 'none' for a text-only prompt")
flags.DEFINE_multi_string("prompt", None, "prompt(s), one per --image", required=True)
flags.DEFINE_integer("max_new_tokens", 200, "maximum generated tokens per answer")
flags.DEFINE_float("temperature", 0.0, "0 = greedy")
flags.DEFINE_integer("top_k", 0, "sample from the k most likely tokens (0 = all)")
flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass")
flags.DEFINE_integer("num_beams", 1, "beam search width (1 = off)")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.DEFINE_string("style", "demo", "prompt style prefix rule (demo = none)")
flags.DEFINE_string("draw", None, "save the image with the answer's points drawn to this PNG")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "parameter and compute dtype")


def draw_path(base: str, index: int, total: int) -> Path:
    path = Path(base)
    return path if total == 1 else path.with_name(f"{path.stem}-{index}{path.suffix or '.png'}")


def report(prompt: str, text: str, image, draw: str | None, index: int, total: int) -> None:
    """Print one answer (and its points in pixels); draw the points when asked."""
    from PIL import Image

    from molmo_jax.preprocess.pointing import draw_points, extract_points

    if total > 1:
        print(f"[{index}] {prompt}")
    print(text)
    if image is None:
        return
    points = extract_points(text, image.shape[1], image.shape[0])
    if points:
        print("points (x, y) in pixels: " + "; ".join(f"({x:.1f}, {y:.1f})" for x, y in points))
    if draw:
        path = draw_path(draw, index, total)
        draw_points(Image.fromarray(image), points).save(path)
        print(f"drew {len(points)} point(s) on {path}")


def main(argv) -> int:
    del argv
    import jax.numpy as jnp

    import molmo_jax
    from molmo_jax.checkpoints.hf import resolve_checkpoint_dir
    from molmo_jax.infer.generate import generate
    from molmo_jax.preprocess.image import load_image

    images = [None if i.lower() == "none" else i for i in FLAGS.image] or [None] * len(FLAGS.prompt)
    if len(images) != len(FLAGS.prompt):
        raise app.UsageError(
            f"{len(FLAGS.image)} --image for {len(FLAGS.prompt)} --prompt: give one image per prompt"
        )
    for image in images:
        if image is not None and not Path(image).exists():
            raise app.UsageError(f"--image {image}: no such file")  # before loading anything
    folder = resolve_checkpoint_dir(FLAGS.checkpoint)
    model = molmo_jax.load_pretrained(folder, dtype=jnp.dtype(FLAGS.dtype))
    processor = molmo_jax.MolmoProcessor.from_pretrained(folder)
    out = generate(
        model,
        processor,
        images,
        FLAGS.prompt,
        max_new_tokens=FLAGS.max_new_tokens,
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
        top_p=FLAGS.top_p,
        num_beams=FLAGS.num_beams,
        seed=FLAGS.seed,
        style=FLAGS.style,
    )
    arrays = [None if image is None else load_image(image) for image in images]
    for i, (prompt, text, array) in enumerate(zip(FLAGS.prompt, out.texts, arrays)):
        report(prompt, text, array, FLAGS.draw, i, len(FLAGS.prompt))
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
