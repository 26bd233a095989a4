"""Held-out AskModelAnything questions answered by a demo checkpoint: exact matches per question kind.

The demo's synthetic AskModelAnything rows ask short questions with one templated answer each ("What
colour is the heart?" -> "The heart is brown."), so an exact match is a fair score. The questions are
posed as in training (``user_qa`` style, "how many" questions with a seeded no-pointing prefix), with
the real images and then with blank (black) ones, as the demo's control; a few answers are printed.

    python benchmarks/demo_qa_probe.py demo_out/stage2/run/hf [--data demo_out/data/raw] [--n 160]
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path
from urllib.parse import urlparse

import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from molmo_jax.checkpoints.hf import load_pretrained
from molmo_jax.eval.evaluate import blank_like
from molmo_jax.infer.generate import generate
from molmo_jax.model.molmo import Molmo
from molmo_jax.preprocess.formatting import no_point_prefix
from molmo_jax.preprocess.processor import MolmoProcessor


def question_kind(question: str) -> str:
    """The question's first two words ("How many", "What colour", ...)."""
    return " ".join(question.split()[:2])


def score(
    model: Molmo, processor: MolmoProcessor, rows: list[dict], blank: bool, batch: int, show: int
) -> dict[str, tuple[int, int]]:
    """(exact matches, questions) per question kind."""
    hits, total = collections.Counter(), collections.Counter()
    rng = np.random.RandomState(0)
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        images = [np.asarray(Image.open(urlparse(r["image_url"]).path).convert("RGB")) for r in chunk]
        if blank:
            images = [blank_like(im) for im in images]
        prompts = [no_point_prefix(r["question"], rng) for r in chunk]
        out = generate(model, processor, images, prompts, max_new_tokens=32, style="user_qa")
        for r, answer in zip(chunk, out.texts):
            kind = question_kind(r["question"])
            total[kind] += 1
            hits[kind] += answer.strip() == r["answer"].strip()
            if show > 0:
                show -= 1
                print(f"  {r['question']!r} -> {answer.strip()!r} (reference {r['answer']!r})")
    return {k: (hits[k], total[k]) for k in total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a demo HF export")
    ap.add_argument("--data", default="demo_out/data/raw", help="the demo's raw synthetic data folder")
    ap.add_argument("--n", type=int, default=160, help="held-out questions (validation split, in order)")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    processor = MolmoProcessor.from_pretrained(args.checkpoint, max_crops=4, overlap_margins=(2, 2))
    model = load_pretrained(args.checkpoint, jnp.float32)
    table = Path(args.data) / "pixmo_ask_model_anything" / "validation.parquet"
    rows = pq.read_table(table).to_pylist()[: args.n]
    for blank in (False, True):
        print("blank images" if blank else "real images")
        result = score(model, processor, rows, blank, args.batch, show=0 if blank else 6)
        for kind, (hit, n) in sorted(result.items()):
            print(f"  {kind:12s} {hit:4d} / {n}")
        hit, n = (sum(v[i] for v in result.values()) for i in (0, 1))
        print(f"  {'all':12s} {hit:4d} / {n} = {hit / n:.3f}")


if __name__ == "__main__":
    main()
