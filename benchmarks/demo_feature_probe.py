"""Linear probes of a demo checkpoint's image features: how much scene content reaches the LLM.

For synthetic shape scenes (``molmo_jax.data.synthetic``, rendered again from their seeds) it takes
the features the connector hands the LLM (the global view's tokens plus the mean over all crops'
tokens), fits a ridge regression on training scenes to per-scene counts (all objects, per colour,
per kind, per 3x3 region) and prints the held-out R^2. ``--init random`` probes the same
architecture at its random initialisation, ``--init pixels`` a 28x28 RGB thumbnail, for reference.

    python benchmarks/demo_feature_probe.py demo_out/stage2/run/hf [--init trained|random|pixels]
        [--train 600] [--heldout 110] [--lam 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from molmo_jax.checkpoints.hf import load_pretrained
from molmo_jax.data.synthetic import KINDS, REGIONS, SHAPE_COLOURS, ShapeScene, region_of, synthetic_scene
from molmo_jax.model.config import get_preset
from molmo_jax.model.molmo import Molmo
from molmo_jax.preprocess.processor import MolmoProcessor

CELLS = [name for row in REGIONS for name in row]  # the captions' 3x3 grid, row-major


def scene_counts(scene: ShapeScene, size: int) -> list[int]:
    """Objects in all, per colour, per kind and per cell of a 3x3 grid (row-major)."""
    objs = scene.objects
    cells = [region_of(o.x, o.y, size) for o in objs]
    return [
        len(objs),
        *(sum(o.colour == c for o in objs) for c in SHAPE_COLOURS),
        *(sum(o.kind == k for o in objs) for k in KINDS),
        *(cells.count(name) for name in CELLS),
    ]


@nnx.jit
def _projected(model: Molmo, images: jnp.ndarray, masks: jnp.ndarray) -> jnp.ndarray:
    return model.encode_images(images, masks)[0]


def features(
    model: Molmo, processor: MolmoProcessor, seed: int, split: str, n: int, size: int, pixels: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and count targets of scenes 0..n-1 of one split."""
    xs, ys = [], []
    for i in range(n):
        image, scene = synthetic_scene(seed, i, split=split, image_size=size)
        if pixels:
            thumb = Image.fromarray(np.asarray(image)).resize((28, 28), Image.BILINEAR)
            xs.append(np.asarray(thumb, np.float32).reshape(-1) / 255)
        else:
            inputs = processor(images=image, text="<|image|> Describe.")
            images, masks = (jnp.asarray(inputs[k])[None] for k in ("images", "image_masks"))
            p = np.asarray(_projected(model, images, masks))[0]  # [crops, tokens, d]; crop 0: global view
            xs.append(np.concatenate([p.mean((0, 1)), p[0].reshape(-1)]))
        ys.append(scene_counts(scene, size))
    return np.stack(xs), np.asarray(ys, np.float64)


def ridge_r2(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, lam: float
) -> np.ndarray:
    """Held-out R^2 per target of a ridge regression on standardised features."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    y_mean = y_train.mean(0)
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y_train - y_mean))
    pred = b @ w + y_mean
    return 1 - ((pred - y_test) ** 2).mean(0) / np.maximum(y_test.var(0), 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a demo HF export (its processor is used in every mode)")
    ap.add_argument("--init", choices=("trained", "random", "pixels"), default="trained")
    ap.add_argument("--train", type=int, default=600, help="training scenes (seed 0, split train)")
    ap.add_argument("--heldout", type=int, default=110, help="held-out scenes (seed 1, split validation)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--lam", type=float, default=1000.0, help="ridge penalty")
    args = ap.parse_args()

    processor = MolmoProcessor.from_pretrained(args.checkpoint, max_crops=4, overlap_margins=(2, 2))
    model = load_pretrained(args.checkpoint, jnp.float32)
    if args.init == "random":  # as the demo starts: the HF config does not record the connector's init
        connector = dataclasses.replace(model.config.connector, init=get_preset("demo").connector.init)
        model = Molmo(model.config.replace(connector=connector), rngs=nnx.Rngs(0))
    start = time.perf_counter()
    pixels = args.init == "pixels"
    x_tr, y_tr = features(model, processor, 0, "train", args.train, args.image_size, pixels)
    x_te, y_te = features(model, processor, 1, "validation", args.heldout, args.image_size, pixels)
    r2 = ridge_r2(x_tr, y_tr, x_te, y_te, args.lam)
    print(
        f"{args.init} features {x_tr.shape[1]}-d, {len(x_tr)} + {len(x_te)} scenes, "
        f"{time.perf_counter() - start:.0f} s; held-out R^2 (lambda {args.lam:g}):"
    )
    sizes = {"all objects": 1, "per colour": len(SHAPE_COLOURS), "per kind": len(KINDS)}
    sizes["per region"] = len(CELLS)
    groups = dict(zip(sizes, np.split(r2, np.cumsum(list(sizes.values()))[:-1])))
    for name, values in groups.items():
        print(f"  {name:12s} {values.mean():6.2f}")


if __name__ == "__main__":
    main()
