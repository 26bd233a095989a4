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
flags.DEFINE_multi_string("prompt", [], "prompt(s), one per --image", required=True)
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


def main(argv) -> int:
    del argv
    import jax.numpy as jnp
    from PIL import Image

    import molmo_jax
    from molmo_jax.infer.generate import generate
    from molmo_jax.preprocess.image import load_image
    from molmo_jax.preprocess.pointing import draw_points

    images = [None if i.lower() == "none" else i for i in FLAGS.image] or [None] * len(FLAGS.prompt)
    if len(images) != len(FLAGS.prompt):
        raise app.UsageError(
            f"{len(FLAGS.image)} --image for {len(FLAGS.prompt)} --prompt: give one image per prompt"
        )
    for image in images:
        if image is not None and not Path(image).exists():
            raise app.UsageError(f"--image {image}: no such file")
    model = molmo_jax.load_pretrained(FLAGS.checkpoint, dtype=jnp.dtype(FLAGS.dtype))
    processor = molmo_jax.MolmoProcessor.from_pretrained(
        molmo_jax.checkpoints.hf.resolve_checkpoint_dir(FLAGS.checkpoint)
    )
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
    for i, (prompt, text, points) in enumerate(zip(FLAGS.prompt, out.texts, out.points)):
        if len(FLAGS.prompt) > 1:
            print(f"[{i}] {prompt}")
        print(text)
        if points:
            print("points (x, y) in pixels: " + "; ".join(f"({x:.1f}, {y:.1f})" for x, y in points))
        if FLAGS.draw and images[i] is not None:
            path = draw_path(FLAGS.draw, i, len(FLAGS.prompt))
            draw_points(Image.fromarray(load_image(images[i])), points).save(path)
            print(f"drew {len(points)} point(s) on {path}")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
