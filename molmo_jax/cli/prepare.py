"""Prepare datasets for training and evaluation (TFDS ArrayRecord shards of verified images).

    python -m molmo_jax.cli.prepare pixmo --dataset pixmo_points --parquet DIR --out DIR [--image_cache DIR]
    python -m molmo_jax.cli.prepare synthetic --out DIR --num_images N [--seed S] [--prepare_to DIR]
    python -m molmo_jax.cli.prepare jsonl --input FILE --out DIR [--name NAME] [--num_val N]
    python -m molmo_jax.cli.prepare academic --dataset chart_qa --root DIR --out DIR [--splits validation]

``pixmo`` downloads and verifies the images of a local copy of a PixMo parquet folder (``file://``
URLs too), prints the downloader's coverage summary, then writes the prepared dataset(s) and a report
of every row and image left out. ``synthetic`` writes the synthetic PixMo-schema parquet files
(``molmo_jax.data.synthetic``) and, with ``--prepare_to``, prepares each of them. ``jsonl`` prepares
users' own data (schema: ``molmo_jax.data.jsonl``); ``academic`` a benchmark from its local files
(layouts: ``molmo_jax.data.academic``). Exit status 1 with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num_val",
        type=int,
        default=-1,
        help="local validation split size (-1: the dataset's default; 0: none)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="validation split seed (default 96817, the original's)"
    )
    p.add_argument(
        "--on_bad_image",
        choices=("skip", "raise"),
        default="skip",
        help="skip (and count) images that do not decode, or stop",
    )
    p.add_argument(
        "--num_shards", type=int, default=None, help="ArrayRecord shards per split (default: by size)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m molmo_jax.cli.prepare", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pixmo", help="a PixMo dataset from its parquet files")
    p.add_argument("--dataset", required=True, help="pixmo_cap, pixmo_points, pixmo_count, ... (see --help)")
    p.add_argument("--parquet", required=True, help="folder (or file) with the dataset's parquet files")
    p.add_argument("--out", required=True, help="data dir for the prepared dataset(s)")
    p.add_argument(
        "--image_cache", default=None, help="image cache (default $PIXMO_IMAGE_DIR or OUT/pixmo_images)"
    )
    p.add_argument(
        "--manifest", default=None, help="download manifest (default IMAGE_CACHE/manifests/DATASET.jsonl)"
    )
    p.add_argument("--no_download", action="store_true", help="use only images the manifest lists as ok")
    p.add_argument(
        "--holdout_parquet",
        default=None,
        help="parquet of images to leave out (PixMo-Points: the pixmo-points-eval files)",
    )
    p.add_argument(
        "--point_units",
        choices=("pixels", "percent"),
        default=None,
        help="override the point units detected from the data",
    )
    p.add_argument("--allow_extra_columns", action="store_true", help="ignore columns not in the schema")
    p.add_argument("--workers", type=int, default=16, help="download threads")
    _common(p)

    p = sub.add_parser("synthetic", help="synthetic PixMo-schema data (molmo_jax.data.synthetic)")
    p.add_argument("--out", required=True, help="folder for the parquet files and images")
    p.add_argument("--num_images", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prepare_to", default=None, help="also prepare every written dataset into this data dir")
    p.add_argument("--num_val", type=int, default=-1)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("jsonl", help="your own data: one JSON object per image (molmo_jax.data.jsonl)")
    p.add_argument("--input", required=True, help="the JSONL file (image paths relative to it)")
    p.add_argument("--out", required=True, help="data dir")
    p.add_argument("--name", default=None, help="prepared dataset name (default: the file's stem)")
    _common(p)

    p = sub.add_parser("academic", help="an academic benchmark from local files (molmo_jax.data.academic)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--root", required=True, help="the dataset's local folder")
    p.add_argument("--out", required=True, help="data dir")
    p.add_argument("--splits", default="validation", help="comma-separated: train, validation, test")
    _common(p)
    return parser


def _print_reports(reports) -> None:
    for r in reports:
        print(r.format())


def run_pixmo(args) -> None:
    from molmo_jax.data import pixmo, prepare

    holdout: set[str] = set()
    if args.holdout_parquet:
        for rows in pixmo.read_parquet(
            "pixmo_points_eval", args.holdout_parquet, allow_extra_columns=True
        ).values():
            holdout.update(r["image_url"] for r in rows)
    cache = args.image_cache or os.environ.get("PIXMO_IMAGE_DIR") or str(Path(args.out) / "pixmo_images")

    def on_download(summary) -> None:
        print(summary.format(), flush=True)

    reports = prepare.prepare_pixmo(
        args.dataset,
        args.parquet,
        args.out,
        image_cache=cache,
        manifest_path=args.manifest,
        download=not args.no_download,
        num_val=args.num_val,
        seed=prepare.VAL_SEED if args.seed is None else args.seed,
        holdout_urls=holdout,
        point_units=args.point_units,
        on_bad_image=args.on_bad_image,
        allow_extra_columns=args.allow_extra_columns,
        num_shards=args.num_shards,
        overwrite=args.overwrite,
        progress=not args.quiet,
        download_kwargs={"workers": args.workers},
        on_download=on_download,
    )
    _print_reports(reports)


def _synthetic_paths(result) -> dict[str, Path]:
    """Dataset name -> parquet path from ``write_synthetic``'s result (values: a path, or a dict with a
    ``parquet`` / ``path`` entry); keys that are not PixMo datasets are ignored."""
    from molmo_jax.data.pixmo import SCHEMAS

    out = {}
    for name, value in dict(result).items():
        if isinstance(value, dict):
            value = value.get("parquet") or value.get("path")
        if name in SCHEMAS and isinstance(value, (str, os.PathLike)):
            out[name] = Path(value)
    return out


def run_synthetic(args) -> None:
    from molmo_jax.data import prepare
    from molmo_jax.data.synthetic import write_synthetic

    result = write_synthetic(args.out, args.num_images, args.seed)
    print(json.dumps(result, indent=1, default=str))
    if args.prepare_to:
        paths = _synthetic_paths(result)
        if not paths:
            raise ValueError("write_synthetic returned no PixMo dataset paths to prepare")
        for name, path in paths.items():
            reports = prepare.prepare_pixmo(
                name,
                path,
                args.prepare_to,
                image_cache=Path(args.prepare_to) / "pixmo_images",
                num_val=args.num_val,
                overwrite=args.overwrite,
                progress=not args.quiet,
                on_download=lambda s: print(s.format(), flush=True),
            )
            _print_reports(reports)


def run_jsonl(args) -> None:
    from molmo_jax.data import jsonl, prepare

    path = Path(args.input)
    name = args.name or path.stem
    records = jsonl.read_jsonl(path)
    report = prepare.PrepareReport(name, Path(args.out) / name, rows=len(records), images=len(records))
    n_val = 0 if args.num_val == -1 else args.num_val
    splits = prepare.split_records(
        records, n_val, seed=prepare.VAL_SEED if args.seed is None else args.seed, notes=report.notes
    )
    _print_reports(
        [
            prepare.prepare_records(
                name,
                splits,
                args.out,
                kind="jsonl",
                report=report,
                on_bad_image=args.on_bad_image,
                num_shards=args.num_shards,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
        ]
    )


def run_academic(args) -> None:
    from molmo_jax.data import academic, prepare

    splits = {s: academic.load_academic(args.dataset, args.root, s) for s in args.splits.split(",") if s}
    n = sum(len(v) for v in splits.values())
    report = prepare.PrepareReport(args.dataset, Path(args.out) / args.dataset, rows=n, images=n)
    _print_reports(
        [
            prepare.prepare_records(
                args.dataset,
                splits,
                args.out,
                kind=args.dataset,
                report=report,
                on_bad_image=args.on_bad_image,
                num_shards=args.num_shards,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from molmo_jax.data.jsonl import JsonlError
    from molmo_jax.data.pixmo import SchemaError
    from molmo_jax.data.prepare import BadImageError, EmptyDatasetError, PreparedDataError

    run = {"pixmo": run_pixmo, "synthetic": run_synthetic, "jsonl": run_jsonl, "academic": run_academic}
    try:
        run[args.command](args)
    except (
        SchemaError,
        EmptyDatasetError,
        BadImageError,
        PreparedDataError,
        JsonlError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
