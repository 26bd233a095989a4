"""CPU benchmark of preprocessing: 640x480 JPEG -> Molmo-7B-D model inputs (shared/bench/README.md).

Single process; the JPEG bytes are decoded, tiled (2x3 + global view = 7 crops), resized,
normalised, patchified and tokenised for every image, as ``processor(images=jpeg, text=prompt)``.
Prints the median over repeated runs (after a warm-up) and a per-stage breakdown; the original
PyTorch code does 64.5 images/s (15.5 ms per image) on the project's 2-core machine.

    python benchmarks/preprocess.py [--repeats 7] [--images 40] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
from PIL import Image

from molmo_jax.preprocess import MolmoProcessor
from molmo_jax.preprocess.image import image_to_inputs, load_image

ORIGINAL_IMAGES_PER_S = 64.5
PROMPT = "Describe this image."


def jpeg_640x480() -> tuple[bytes, str]:
    """A 640x480 photograph as JPEG (quality 90): skimage's astronaut when installed, else a smooth
    synthetic picture with mild noise (similar decode cost)."""
    try:
        from skimage import data

        image, what = Image.fromarray(data.astronaut()).resize((640, 480), Image.BICUBIC), "skimage astronaut"
    except ImportError:
        yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
        base = np.stack([xx / 640, yy / 480, 0.5 + 0.5 * np.sin(xx / 37 + yy / 53)], -1) * 255
        noise = np.random.default_rng(0).normal(0, 12, base.shape)
        image, what = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)), "synthetic"
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), what


def per_image_seconds(fn, n_images: int, repeats: int) -> list[float]:
    for _ in range(3):  # warm-up: resampling matrices, tokenizer caches
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n_images):
            fn()
        runs.append((time.perf_counter() - start) / n_images)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--images", type=int, default=40, help="images per timed run")
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    args = parser.parse_args()

    processor = MolmoProcessor.from_pretrained("Molmo-7B-D")
    jpeg, what = jpeg_640x480()
    example = processor(images=jpeg, text=PROMPT)
    decoded = load_image(jpeg)

    stages = {
        "full (decode + crops + tokens)": lambda: processor(images=jpeg, text=PROMPT),
        "JPEG decode": lambda: load_image(jpeg),
        "crops + image tokens": lambda: image_to_inputs(
            decoded, processor.image_config, processor.image_token_ids
        ),
    }
    medians = {
        name: statistics.median(per_image_seconds(fn, args.images, args.repeats))
        for name, fn in stages.items()
    }
    full = medians["full (decode + crops + tokens)"]
    images_per_s = 1.0 / full

    print(f"input: 640x480 JPEG ({what}, {len(jpeg) / 1024:.0f} KiB), prompt {PROMPT!r}, Molmo-7B-D settings")
    print(f"output: {len(example['images'])} crops, {len(example['input_ids'])} tokens")
    print(f"median of {args.repeats} runs x {args.images} images, single process:")
    for name, seconds in medians.items():
        print(f"  {name:32s} {seconds * 1e3:7.2f} ms/image")
    print(
        f"throughput: {images_per_s:.1f} images/s (original PyTorch: {ORIGINAL_IMAGES_PER_S} images/s, "
        f"{images_per_s / ORIGINAL_IMAGES_PER_S:.2f}x)"
    )
    if args.json:
        print(json.dumps({"images_per_s": round(images_per_s, 2)}))


if __name__ == "__main__":
    main()
