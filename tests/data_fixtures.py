"""Generated images, PixMo-schema parquet files and prepared datasets for the data tests (no downloads)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def jpeg_bytes(width: int, height: int, seed: int, fmt: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


POINTS_SCHEMA = pa.schema(
    [
        ("image_url", pa.string()),
        ("image_sha256", pa.string()),
        ("points", pa.list_(pa.struct([("x", pa.float64()), ("y", pa.float64())]))),
        ("count", pa.int64()),
        ("label", pa.string()),
        ("collection_method", pa.string()),
    ]
)


def points_dataset(
    root: Path,
    n_images: int = 12,
    *,
    size: tuple[int, int] = (160, 120),
    bad: tuple[int, ...] = (),
    missing: tuple[int, ...] = (),
    wrong_hash: tuple[int, ...] = (),
    labels: tuple[str, ...] = ("cat", "dog"),
) -> tuple[Path, list[str]]:
    """A PixMo-Points parquet folder with file:// images: image ``i`` has one row per label with ``i % 4``
    pixel points; even images are "pointing", odd "counting". ``bad`` images are truncated JPEGs whose
    sha256 matches the row (so only decoding catches them), ``missing`` ones do not exist and
    ``wrong_hash`` ones have a different sha256 in the row. Returns (parquet folder, image URLs)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows, urls = [], []
    w, h = size
    for i in range(n_images):
        data = jpeg_bytes(w, h, seed=i)
        if i in bad:
            data = data[: len(data) // 2]
        path = images / f"img {i}.jpg"
        if i not in missing:
            path.write_bytes(data)
        url = path.as_uri()
        urls.append(url)
        digest = sha(b"not these bytes") if i in wrong_hash else sha(data)
        for j, label in enumerate(labels):
            pts = [{"x": float(5 + 37 * k + j), "y": float(7 + 23 * k)} for k in range(i % 4)]
            if len(pts) >= 2:
                pts[-1]["x"] = 150.0  # pixels: some coordinates above 100
            rows.append(
                {
                    "image_url": url,
                    "image_sha256": digest,
                    "points": pts,
                    "count": len(pts),
                    "label": label,
                    "collection_method": "pointing" if i % 2 == 0 else "counting",
                }
            )
    return write_parquet(root / "parquet" / "train-00000-of-00001.parquet", rows, POINTS_SCHEMA).parent, urls


def cap_dataset(root: Path, n_images: int = 8, size: tuple[int, int] = (96, 64)) -> Path:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        path = images / f"{i}.png"
        path.write_bytes(jpeg_bytes(*size, seed=100 + i, fmt="PNG"))
        rows.append(
            {
                "image_url": path.as_uri(),
                "caption": f"A picture number {i} with noise.",
                "transcripts": [f"transcript {i} a", f"transcript {i} b"],
            }
        )
    return write_parquet(root / "parquet" / "train.parquet", rows).parent
