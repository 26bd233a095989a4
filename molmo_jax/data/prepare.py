"""Prepared datasets: verified images + grouped annotations in TFDS ArrayRecord shards, and their reader.

Layout (a TFDS data dir; readable with ``tfds.builder_from_directory``, no TensorFlow needed)::

    DATA_DIR/NAME/1.0.0/
        dataset_info.json  features.json          TFDS metadata
        NAME-train.array_record-00000-of-00001    one record per image (train split)
        NAME-validation.array_record-00000-...    the fixed local validation split (or published splits)
        molmo_prepared.json                       shard sizes, point units, preparation report

Every record holds the **encoded** image bytes (never pixels), ``image_url``, ``image_sha256`` (of
the bytes), ``width`` / ``height`` (after EXIF rotation, as ``load_image`` sees the image) and
``annotations``: a JSON list of the image's annotation rows (the dataset's own columns, see
``molmo_jax.data.pixmo``). Records are written in split order (TFDS shuffling disabled: the training
pipeline shuffles globally with a seed).

``prepare_pixmo`` reads a published parquet folder, downloads and verifies the images through
``molmo_jax.data.download`` (``file://`` URLs included; its cache and manifest are reused), keeps
only images whose manifest status is ``ok`` and that decode, groups rows by image URL, cuts the local
validation split exactly as the original (``train_test_split(test_size=n_val, seed=96817)``:
``np.random.default_rng(96817).permutation(n)``, the first ``n_val`` are validation) and writes the
shards. Every dropped row and image is counted by reason in the :class:`PrepareReport`; bad images
raise instead with ``on_bad_image="raise"``; a dataset left empty raises :class:`EmptyDatasetError`.

:class:`PreparedSource` is the random-access reader (a Grain data source): it checks that every
shard exists with its recorded size before reading, and read errors name the shard file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from molmo_jax.data import pixmo
from molmo_jax.data.download import (
    OK,
    DownloadSummary,
    ImageRequest,
    cached_image_path,
    download_images,
    read_manifest,
)

PREPARED_VERSION = "1.0.0"
INFO_FILE = "molmo_prepared.json"
VAL_SEED = 96817  # the original's train_test_split seed
_FORMAT = 1


class PreparedDataError(RuntimeError):
    """A prepared dataset that is missing, incomplete or unreadable (names the file)."""


class EmptyDatasetError(ValueError):
    """Nothing left to write (or to read)."""


class BadImageError(ValueError):
    """Image bytes that do not decode."""


@dataclasses.dataclass
class PrepareReport:
    """What one preparation wrote and everything it left out, by reason."""

    dataset: str
    path: Path
    rows: int = 0
    images: int = 0
    splits: dict[str, int] = dataclasses.field(default_factory=dict)
    rows_dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    images_skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    point_units: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    download: DownloadSummary | None = None

    def format(self) -> str:
        total = sum(self.splits.values())
        lines = [
            f"{self.dataset}: {total} examples ({', '.join(f'{k} {v}' for k, v in self.splits.items())}) "
            f"from {self.rows} rows / {self.images} images -> {self.path}"
        ]
        for title, counts in (("rows dropped", self.rows_dropped), ("images skipped", self.images_skipped)):
            for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {title:<15} {reason:<28} {n:>9}")
        if self.point_units:
            lines.append(f"  point units: {self.point_units}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("download", "path")}
        out["path"] = str(self.path)
        return out


# ----------------------------------------------------------------------------------------------
# Images


def inspect_image(data: bytes, *, name: str = "image") -> tuple[int, int]:
    """(width, height) of encoded image bytes after EXIF rotation; raises :class:`BadImageError` for
    bytes PIL cannot fully decode (truncated files included; JPEGs are decoded at 1/8 scale)."""
    from PIL import Image

    if not data:
        raise BadImageError(f"{name}: empty image bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
            if img.format == "JPEG":
                img.draft("RGB", (1, 1))
            img.load()
    except Exception as e:
        raise BadImageError(f"{name}: not a decodable image ({type(e).__name__}: {e})") from None
    if width <= 0 or height <= 0:
        raise BadImageError(f"{name}: image has size {width}x{height}")
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def validation_split(n: int, n_val: int, seed: int = VAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) as HF ``train_test_split(test_size=n_val, seed=seed)``."""
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_val:], perm[:n_val]


# ----------------------------------------------------------------------------------------------
# Writing


def _features():
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Tensor(shape=(), dtype=np.str_, doc="encoded image bytes"),
            "image_url": tfds.features.Text(),
            "image_sha256": tfds.features.Text(),
            "width": tfds.features.Scalar(dtype=np.int32),
            "height": tfds.features.Scalar(dtype=np.int32),
            "annotations": tfds.features.Text(doc="JSON list of the image's annotation rows"),
        }
    )


def _record_bytes(rec: Mapping) -> bytes:
    if rec.get("image") is not None:
        return rec["image"]
    path = rec["image_path"]
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise PreparedDataError(f"cannot read image {path}: {e}") from None


def _encode(rec: Mapping, check_sha: bool) -> dict:
    data = _record_bytes(rec)
    sha = hashlib.sha256(data).hexdigest()
    if check_sha and rec.get("image_sha256") and rec["image_sha256"] != sha:
        raise PreparedDataError(
            f"{rec.get('image_path') or rec.get('image_url')}: image changed since it was "
            f"verified (sha256 {sha}, expected {rec['image_sha256']})"
        )
    anns = rec.get("annotations")
    return {
        "image": data,
        "image_url": rec.get("image_url") or "",
        "image_sha256": sha,
        "width": int(rec.get("width", 0)),
        "height": int(rec.get("height", 0)),
        "annotations": anns if isinstance(anns, str) else pixmo.annotations_to_json(anns or []),
    }


def write_prepared(
    out_dir: str | os.PathLike,
    name: str,
    splits: Mapping[str, Sequence[Mapping]],
    *,
    metadata: Mapping[str, Any] | None = None,
    num_shards: int | None = None,
    overwrite: bool = False,
    check_sha: bool = True,
    progress: bool = False,
) -> Path:
    """Write records (``image`` bytes or ``image_path``, ``image_url``, ``width``, ``height``,
    ``annotations`` list; optional ``image_sha256`` checked against the bytes) as the TFDS ArrayRecord
    dataset ``out_dir/name/1.0.0``. Records are written as given (no verification: see
    :func:`prepare_records`). Returns the version folder."""
    import tensorflow_datasets as tfds

    if not splits or not any(len(v) for v in splits.values()):
        raise EmptyDatasetError(f"{name}: no records to write")
    root = Path(out_dir) / name
    version_dir = root / PREPARED_VERSION
    if version_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{version_dir} exists; pass overwrite=True (--overwrite) to replace it")
        import shutil

        shutil.rmtree(version_dir)
    dataset_name = name
    split_records = {k: v for k, v in splits.items() if len(v)}

    class _LocalInfo(tfds.core.DatasetInfo):
        def initialize_from_bucket(self) -> None:
            """No published metadata to fetch for a local dataset. (TFDS's own version makes a
            folder in the system temp dir per builder and leaves it behind.)"""

    class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = dataset_name
        VERSION = tfds.core.Version(PREPARED_VERSION)
        # A dot-free module: TFDS then skips looking for a checksums file next to the builder's code
        # (that lookup needs the importlib_resources package for classes inside packages).
        __module__ = "molmo_prepared"

        def _info(self):
            return _LocalInfo(
                builder=self,
                features=_features(),
                disable_shuffling=True,
                description=f"molmo-jax prepared dataset {dataset_name}",
                metadata=tfds.core.MetadataDict(dict(metadata or {})),
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(recs) for split, recs in split_records.items()}

        def _generate_examples(self, records):
            for i, rec in enumerate(records):
                yield i, _encode(rec, check_sha)

    tfds.display_progress_bar(progress)
    tmp_downloads = root / ".tfds_downloads"
    builder = _Builder(data_dir=str(out_dir), file_format="array_record")
    builder.download_and_prepare(
        download_dir=str(tmp_downloads), download_config=tfds.download.DownloadConfig(num_shards=num_shards)
    )
    import shutil

    shutil.rmtree(tmp_downloads, ignore_errors=True)
    info = {
        "format": _FORMAT,
        "dataset": name,
        "version": PREPARED_VERSION,
        "created": time.time(),
        **dict(metadata or {}),
        "splits": {},
    }
    for split in split_records:
        files = [Path(fi.filename) for fi in builder.info.splits[split].file_instructions]
        info["splits"][split] = {
            "num_examples": builder.info.splits[split].num_examples,
            "shards": [{"file": f.name, "bytes": f.stat().st_size} for f in files],
        }
    tmp = version_dir / (INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=1, default=str))
    os.replace(tmp, version_dir / INFO_FILE)
    return version_dir


def _verify_one(rec: dict, on_bad_image: str) -> tuple[dict | None, str | None]:
    """(record with width/height/sha, None) or (None, reason) for an image record."""
    try:
        data = _record_bytes(rec)
    except PreparedDataError:
        if on_bad_image == "raise":
            raise
        return None, "unreadable_cache_file"
    sha = hashlib.sha256(data).hexdigest()
    if rec.get("manifest_sha256") and rec["manifest_sha256"] != sha:
        if on_bad_image == "raise":
            raise BadImageError(
                f"{rec.get('image_path')}: cache file changed since download "
                f"(sha256 {sha}, manifest {rec['manifest_sha256']})"
            )
        return None, "cache_changed"
    try:
        width, height = inspect_image(data, name=str(rec.get("image_url") or rec.get("image_path")))
    except BadImageError:
        if on_bad_image == "raise":
            raise
        return None, "bad_image"
    out = {k: v for k, v in rec.items() if k not in ("manifest_sha256",)}
    out.update(width=width, height=height, image_sha256=sha)
    return out, None


def verify_records(
    records: Sequence[dict], *, on_bad_image: str = "skip", workers: int = 8, skipped: Counter | None = None
) -> list[dict]:
    """Decode-check every record's image (threads); bad ones are counted in ``skipped`` by reason, or
    raise :class:`BadImageError` with ``on_bad_image="raise"``."""
    if on_bad_image not in ("skip", "raise"):
        raise ValueError(f"on_bad_image must be 'skip' or 'raise', got {on_bad_image!r}")
    skipped = Counter() if skipped is None else skipped
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda r: _verify_one(r, on_bad_image), records))
    out = []
    for rec, reason in results:
        if rec is None:
            skipped[reason] += 1
        else:
            out.append(rec)
    return out


def split_records(
    records: Sequence[dict], n_val: int | None, *, seed: int = VAL_SEED, notes: list[str] | None = None
) -> dict[str, list[dict]]:
    """``{"train": ..., "validation": ...}`` with the original's seeded split; ``n_val`` above a quarter of
    the records (small data sets) is lowered to that, at least 1 (noted)."""
    if not n_val:
        return {"train": list(records)}
    n = len(records)
    limit = max(1, n // 4) if n >= 2 else 0
    if n_val > limit:
        if notes is not None:
            notes.append(f"validation split lowered from {n_val} to {limit} (a quarter of {n} images)")
        n_val = limit
    if n_val == 0:
        return {"train": list(records)}
    train, val = validation_split(n, n_val, seed)
    return {"train": [records[i] for i in train], "validation": [records[i] for i in val]}


def prepare_records(
    name: str,
    splits: Mapping[str, Sequence[dict]],
    out_dir: str | os.PathLike,
    *,
    kind: str,
    report: PrepareReport | None = None,
    on_bad_image: str = "skip",
    metadata: Mapping[str, Any] | None = None,
    num_shards: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    workers: int = 8,
    verify: bool = True,
) -> PrepareReport:
    """Verify the images of already-split records (unless ``verify=False``: done by the caller) and write
    them (:func:`write_prepared`). ``kind`` names the example builder (a task or ``jsonl``) readers use."""
    report = report or PrepareReport(name, Path(out_dir) / name / PREPARED_VERSION)
    skipped: Counter = Counter(report.images_skipped)
    verified = (
        {
            s: verify_records(recs, on_bad_image=on_bad_image, workers=workers, skipped=skipped)
            for s, recs in splits.items()
        }
        if verify
        else dict(splits)
    )
    report.images_skipped = dict(skipped)
    report.splits = {s: len(v) for s, v in verified.items()}
    if not any(report.splits.values()):
        raise EmptyDatasetError(
            f"{name}: no example left to write ({report.rows} rows, {report.images} images; "
            f"skipped: {report.images_skipped or 'none'}; dropped: {report.rows_dropped or 'none'})"
        )
    meta = {"kind": kind, "point_units": report.point_units, **dict(metadata or {})}
    meta["report"] = report.to_json()
    report.path = write_prepared(
        out_dir, name, verified, metadata=meta, num_shards=num_shards, overwrite=overwrite, progress=progress
    )
    return report


# ----------------------------------------------------------------------------------------------
# PixMo


def _cache_embedded(rows: Iterable[dict], cache_dir: Path) -> Iterable[dict]:
    """Embedded images (PixMo-Docs) go to ``cache_dir/embedded/<sha256>`` so records stay small."""
    folder = cache_dir / "embedded"
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        data = row.get("image")
        if data:
            sha = hashlib.sha256(data).hexdigest()
            path = folder / sha
            if not path.exists():
                tmp = folder / f".{sha}.{os.getpid()}.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, path)
            row = dict(row, image=None, image_path=str(path), image_url=f"embedded:{sha}")
        yield row


def _rows_by_output(schema: pixmo.PixmoSchema, rows: list[dict], dropped: Counter) -> dict[str, list[dict]]:
    if schema.name == "pixmo_points":
        names = {"pointing": "pixmo_points", "counting": "pixmo_points_high_freq"}
        out: dict[str, list[dict]] = {n: [] for n in names.values()}
        for row in rows:
            target = names.get(row.get("collection_method"))
            if target is None:
                dropped[f"collection_method={row.get('collection_method')}"] += 1
            else:
                out[target].append(row)
        return out
    if schema.name == "pixmo_point_explanations":
        kept = [r for r in rows if r.get("parsed_response") is not None]
        if len(kept) < len(rows):
            dropped["null_parsed_response"] += len(rows) - len(kept)
        return {schema.name: kept}
    return {schema.name: rows}


def prepare_pixmo(
    dataset: str,
    parquet_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_cache: str | os.PathLike | None = None,
    manifest_path: str | os.PathLike | None = None,
    download: bool = True,
    num_val: int | None = -1,
    seed: int = VAL_SEED,
    holdout_urls: Iterable[str] = (),
    point_units: str | None = None,
    on_bad_image: str = "skip",
    allow_extra_columns: bool = False,
    num_shards: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    download_kwargs: Mapping[str, Any] | None = None,
    on_download: Callable[[DownloadSummary], None] | None = None,
) -> list[PrepareReport]:
    """Prepare one PixMo dataset (``pixmo.SCHEMAS``) from its local parquet folder; returns one report per
    prepared dataset (PixMo-Points gives ``pixmo_points`` and ``pixmo_points_high_freq``).

    ``image_cache`` (default ``out_dir/pixmo_images``) and ``manifest_path`` (default
    ``image_cache/manifests/{dataset}.jsonl``) are the downloader's; with ``download=False`` only images
    the manifest already lists as ok are used. ``num_val=-1`` uses the dataset's default local
    validation size (``None``/0: no local split). ``holdout_urls``: images to leave out (the original
    removes PixMo-Points-Eval images from PixMo-Points). ``point_units`` overrides the detected units.
    """
    schema = pixmo.get_schema(dataset)
    if point_units not in (None, "pixels", "percent"):
        raise ValueError(f"point_units must be 'pixels' or 'percent', got {point_units!r}")
    out_dir = Path(out_dir)
    cache = Path(image_cache) if image_cache is not None else out_dir / "pixmo_images"
    manifest = Path(manifest_path) if manifest_path is not None else cache / "manifests" / f"{dataset}.jsonl"
    by_split = pixmo.read_parquet(schema, parquet_dir, allow_extra_columns=allow_extra_columns)
    all_rows = [r for rows in by_split.values() for r in rows]
    if not all_rows:
        raise EmptyDatasetError(f"{dataset}: the parquet files under {parquet_dir} have no rows")

    summary = None
    ok_paths: dict[str, tuple[str, str | None]] = {}
    failed: dict[str, str] = {}
    if schema.image == "embedded":
        cache.mkdir(parents=True, exist_ok=True)
        by_split = {s: list(_cache_embedded(rows, cache)) for s, rows in by_split.items()}
        for rows in by_split.values():
            for r in rows:
                if r.get("image_path"):
                    ok_paths[r["image_url"]] = (r["image_path"], None)
    else:
        if download:
            requests = [
                ImageRequest(r["image_url"], r.get("image_sha256") if schema.check_sha else None)
                for r in all_rows
                if r.get("image_url")
            ]
            summary = download_images(
                requests, cache, manifest, progress=progress, **dict(download_kwargs or {})
            )
            if on_download is not None:
                on_download(summary)
        elif not manifest.exists():
            raise FileNotFoundError(f"no download manifest at {manifest} (run with download=True first)")
        for url, rec in read_manifest(manifest).items():
            if rec["status"] == OK:
                ok_paths[url] = (str(cached_image_path(cache, url)), rec.get("sha256"))
            else:
                failed[url] = rec["status"]

    holdout = set(holdout_urls)
    reports = []
    dropped_all: Counter = Counter()
    outputs = {s: _rows_by_output(schema, rows, dropped_all) for s, rows in by_split.items()}
    for name in schema.outputs:
        report = PrepareReport(name, out_dir / name / PREPARED_VERSION, download=summary)
        dropped, skipped = Counter(dropped_all), Counter()
        splits: dict[str, list[dict]] = {}
        for split, per_output in outputs.items():
            rows = per_output.get(name, [])
            report.rows += len(rows)
            kept = []
            for r in rows:
                url = r.get("image_url")
                if url in holdout:
                    dropped["held_out"] += 1
                elif url not in ok_paths:
                    dropped[f"image_{failed.get(url, 'not_downloaded')}"] += 1
                else:
                    kept.append(r)
            groups = pixmo.group_by_image(kept, group=schema.group_by_image)
            report.images += len({g.get("image_url") for g in groups})
            recs = []
            for g in groups:
                path, sha = ok_paths[g["image_url"]]
                recs.append(
                    {
                        "image_url": g["image_url"],
                        "image_path": path,
                        "manifest_sha256": sha,
                        "annotations": g["annotations"],
                    }
                )
            splits[split] = recs
        splits = {
            s: verify_records(recs, on_bad_image=on_bad_image, skipped=skipped) for s, recs in splits.items()
        }
        n_val = schema.num_val if num_val == -1 else num_val
        if "validation" not in splits and n_val and "train" in splits:
            splits = {**split_records(splits.pop("train"), n_val, seed=seed, notes=report.notes), **splits}
        report.rows_dropped = dict(dropped)
        report.images_skipped = dict(skipped)
        units = point_units or pixmo.detect_point_units(
            p
            for recs in splits.values()
            for r in recs
            for p in pixmo.annotation_points(schema.name, r["annotations"])
        )
        report.point_units = units
        if units and point_units is None:
            report.notes.append(f"point units detected from the data range: {units}")
        reports.append(
            prepare_records(
                name,
                splits,
                out_dir,
                kind=name,
                report=report,
                on_bad_image=on_bad_image,
                metadata={"schema": schema.name, "hub_id": schema.hub_id},
                verify=False,
                num_shards=num_shards,
                overwrite=overwrite,
                progress=progress,
            )
        )
    return reports


# ----------------------------------------------------------------------------------------------
# Reading


def prepared_dir(data_dir: str | os.PathLike, name: str) -> Path:
    """The version folder of prepared dataset ``name`` (the highest version present)."""
    root = Path(data_dir) / name
    versions = sorted(
        (p for p in root.glob("*") if (p / "dataset_info.json").exists()),
        key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()),
    )
    if not versions:
        raise PreparedDataError(
            f"no prepared dataset {name!r} in {data_dir} (expected {root}/{PREPARED_VERSION}/"
            "dataset_info.json; run `python -m molmo_jax.cli.prepare`)"
        )
    return versions[-1]


def prepared_info(data_dir: str | os.PathLike, name: str) -> dict:
    """The ``molmo_prepared.json`` of a prepared dataset."""
    path = prepared_dir(data_dir, name) / INFO_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PreparedDataError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def prepared_size(data_dir: str | os.PathLike, name: str, split: str = "train") -> int:
    """Number of records in a split (from the metadata; no shard is opened)."""
    info = prepared_info(data_dir, name)
    if split not in info["splits"]:
        raise PreparedDataError(f"{name} has no split {split!r} (splits: {', '.join(info['splits'])})")
    return int(info["splits"][split]["num_examples"])


class PreparedSource:
    """Random access to one split of a prepared dataset (a Grain ``RandomAccessDataSource``).

    ``source[i]`` -> ``{image (bytes), image_url, image_sha256, width, height, annotations (list),
    dataset, point_units, record_index}``. Shards are checked (present, recorded size) when the source
    is created; errors while reading name the shard file. Picklable (worker processes reopen it).
    """

    def __init__(self, data_dir: str | os.PathLike, name: str, split: str = "train"):
        self.data_dir, self.name, self.split = str(data_dir), name, split
        self.path = prepared_dir(data_dir, name)
        info = prepared_info(data_dir, name)
        if split not in info.get("splits", {}):
            raise PreparedDataError(
                f"{self.path}: no split {split!r} (splits: {', '.join(info.get('splits', {}))})"
            )
        self.kind = info.get("kind", name)
        self.point_units = info.get("point_units")
        split_info = info["splits"][split]
        self._length = int(split_info["num_examples"])
        if self._length == 0:
            raise EmptyDatasetError(f"{self.path}: split {split!r} is empty")
        self._shards = []
        for shard in split_info["shards"]:
            path = self.path / shard["file"]
            if not path.exists():
                raise PreparedDataError(f"shard missing: {path} (prepare the dataset again)")
            size = path.stat().st_size
            if size != shard["bytes"]:
                raise PreparedDataError(
                    f"shard {path} has {size} bytes, {shard['bytes']} were written: "
                    "truncated or replaced (prepare the dataset again)"
                )
            self._shards.append(path)
        self._source = None

    def _open(self):
        if self._source is None:
            import tensorflow_datasets as tfds

            try:
                builder = tfds.builder_from_directory(str(self.path))
                self._source = builder.as_data_source(split=self.split)
                instr = builder.info.splits[self.split].file_instructions
                self._bounds = np.cumsum([fi.take for fi in instr])
            except Exception as e:
                raise PreparedDataError(
                    f"{self.path}: cannot open split {self.split!r} ({type(e).__name__}: {e})"
                ) from None
        return self._source

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self._length:
            raise IndexError(f"{self.name}/{self.split}: index {index} out of range ({self._length} records)")
        source = self._open()
        try:
            raw = source[index]
        except Exception as e:
            shard = self._shards[
                min(int(np.searchsorted(self._bounds, index, side="right")), len(self._shards) - 1)
            ]
            raise PreparedDataError(
                f"{shard}: cannot read record {index} ({type(e).__name__}: {e})"
            ) from None
        try:
            annotations = json.loads(_text(raw["annotations"]))
        except json.JSONDecodeError as e:
            raise PreparedDataError(f"{self.path}: record {index} has unreadable annotations ({e})") from None
        return {
            "image": bytes(raw["image"]),
            "image_url": _text(raw["image_url"]),
            "image_sha256": _text(raw["image_sha256"]),
            "width": int(raw["width"]),
            "height": int(raw["height"]),
            "annotations": annotations,
            "dataset": self.name,
            "point_units": self.point_units,
            "record_index": index,
        }

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_source", "_bounds")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._source = None

    def __repr__(self) -> str:
        return f"PreparedSource({self.path}, split={self.split!r}, {self._length} records)"


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def open_prepared(data_dir: str | os.PathLike, name: str, split: str = "train") -> PreparedSource:
    """:class:`PreparedSource` for ``data_dir/name`` (split ``train``, ``validation`` or ``test``)."""
    return PreparedSource(data_dir, name, split)
