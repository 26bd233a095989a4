"""CPU benchmark of the Grain data pipeline: prepared PixMo-Cap-style records -> static-shape batches.

Writes a prepared dataset of 640x480 JPEGs with captions (ArrayRecord, as ``prepare`` does) in a
temporary folder, then measures examples per second through the full pipeline (shuffle, record read,
JPEG decode, 2x3 tiling + global view, tokens, padding to the token / crop budgets, batching) with
the Molmo-7B-D settings (max_crops 12 -> 13 crops, sequence length 2304), with 0 and 2 worker
processes. Prints the figures (and with ``--json`` one final JSON line); timings are never asserted.

    python benchmarks/data_pipeline.py [--images 64] [--batches 12] [--batch_size 8] [--workers 0,2] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from molmo_jax.data import pipeline, prepare
from molmo_jax.preprocess import MolmoProcessor


def jpeg(seed: int) -> bytes:
    """A 640x480 JPEG (quality 90): smooth colour fields with noise, different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    fx, fy = rng.uniform(20, 60, 2)
    base = np.stack([xx / 640, yy / 480, 0.5 + 0.5 * np.sin(xx / fx + yy / fy)], -1) * 255
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_dataset(data_dir: Path, n_images: int) -> None:
    words = [
        "a",
        "dog",
        "runs",
        "on",
        "the",
        "beach",
        "near",
        "blue",
        "water",
        "while",
        "children",
        "play",
        "with",
        "a",
        "red",
        "kite",
    ]
    rng = np.random.default_rng(0)
    records = [
        {
            "image": jpeg(i),
            "image_url": f"bench:{i}",
            "width": 640,
            "height": 480,
            "annotations": [{"caption": " ".join(rng.choice(words, 60)), "transcripts": []}],
        }
        for i in range(n_images)
    ]
    prepare.write_prepared(data_dir, "pixmo_cap", {"train": records}, metadata={"kind": "pixmo_cap"})


def measure(data_dir: Path, processor, workers: int, batch_size: int, batches: int) -> float:
    config = pipeline.PipelineConfig(
        batch_size=batch_size,
        sequence_length=2304,
        num_workers=workers,
        process_index=0,
        process_count=1,
        read_threads=1,
    )
    it = iter(pipeline.build_pipeline("pixmo_cap", processor, config, data_dir=data_dir))
    try:
        for _ in range(2):  # warm-up: worker start, caches
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(it)
        seconds = time.perf_counter() - start
        assert batch["images"].shape == (batch_size, 13, 576, 588), batch["images"].shape
    finally:
        it.close()
    return batch_size * batches / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="distinct JPEGs in the prepared dataset")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per setting")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    args = parser.parse_args()

    processor = MolmoProcessor.from_pretrained("Molmo-7B-D")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), args.images)
        print(
            f"{args.images} prepared 640x480 JPEG captions, Molmo-7B-D settings (13 crops, 2304 tokens), "
            f"batch {args.batch_size}, {args.batches} timed batches after 2 warm-up batches"
        )
        for workers in (int(w) for w in args.workers.split(",")):
            eps = measure(Path(tmp), processor, workers, args.batch_size, args.batches)
            results[f"workers_{workers}"] = round(eps, 2)
            print(f"  {workers} worker process(es): {eps:6.1f} examples/s ({1e3 / eps:6.1f} ms/example)")
    if args.json:
        print(json.dumps({"examples_per_s": results}))


if __name__ == "__main__":
    main()
