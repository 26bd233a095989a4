"""PixMo datasets: the published parquet schemas, reading and grouping rows, and Molmo examples.

Three layers, each usable on its own:

* **Schemas** (:data:`SCHEMAS`): the columns of every PixMo dataset as published on the hub (MOLMO_SPEC
  11.1), checked against each parquet file before anything is read: a missing, unknown or mistyped
  column raises :class:`SchemaError` naming the file and the column.
* **Rows -> images**: :func:`read_parquet` reads a local folder of parquet files (the hub layout,
  ``{split}-00000-of-00004.parquet``, optionally in ``data/`` or split-named sub-folders) into
  normalised rows per split; :func:`group_by_image` groups them by image URL in first-appearance
  order, one group per image with all its annotation rows (the original ``filter_and_group_data``).
* **Records -> examples** (:data:`PIXMO_TASKS`): a prepared record (one image + its annotation rows,
  see ``molmo_jax.data.prepare``) becomes the example dict ``MolmoProcessor.process_example`` takes:
  ``image`` plus ``message_list`` / ``prompt`` + ``text`` / ``label`` + ``points`` and the ``style``
  of MOLMO_SPEC 6.4. Randomness (transcript choice, "no pointing" prefixes, half of the
  Point-Explanations conversations) comes from the example's ``RandomState``.

**Point units** (open question 13.2): the PixMo-Points / Count cards say pixels, the original treats
PixMo-Points and Point-Explanations as 0-100. :func:`detect_point_units` decides from the data: any
coordinate above 100 means pixels, otherwise percent (0-100); ``prepare`` records the result per
dataset and the examples pass ``point_scale=100`` for percent data (pixels are converted with the
loaded image size by the formatter, as the original does for PixMo-Count).

**PixMo-Clocks** has no published schema (13.6). Ours: ``image_url`` str, ``hour`` int (0-23),
``minute`` int, ``second`` int (-1 or null when the clock shows no seconds), optional
``image_sha256`` str, ``time_format`` str (``"12 hour clock (without AM/PM)"`` (default),
``"12 hour clock (with AM/PM)"`` or ``"The time is not shown"``) and ``shows_seconds`` bool (default:
``second >= 0``). Targets follow the original ``PixMoClocks``: ``"The time shown is 3:07:09"``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from molmo_jax.preprocess.formatting import no_point_prefix

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


class SchemaError(ValueError):
    """A parquet file whose columns do not match the dataset's published schema."""


class BadRecordError(ValueError):
    """A record (one image and its annotations) that cannot become an example."""


# ----------------------------------------------------------------------------------------------
# Schemas


@dataclasses.dataclass(frozen=True)
class Column:
    """One parquet column: ``kind`` is one of the keys of ``_KIND_CHECKS``."""

    name: str
    kind: str
    required: bool = True


@dataclasses.dataclass(frozen=True)
class PixmoSchema:
    """A PixMo dataset as published, and how the original prepares it (MOLMO_SPEC 11.1-11.2).

    Attributes:
      name: our dataset name (``pixmo_points``); prepared datasets use it (``prepared_names``).
      hub_id: the hub repository the parquet files come from.
      columns: the published columns.
      alternatives: column groups of which one must be present (CapQA: ``messages`` or ``question`` +
        ``answer``); their columns are listed in ``columns`` as not required.
      image: ``"url"`` (downloaded, ``image_url``) or ``"embedded"`` (``image`` bytes in the parquet).
      check_sha: verify the content sha256 against ``image_sha256`` (as the original's ``check_sha``).
      num_val: size of the local validation split cut from train when the parquet has no validation
        split (``None``: never).
      group_by_image: one example per image with all its rows (training sets), else one per row.
      verified: the schema was checked against the published card; unverified ones accept extra columns.
    """

    name: str
    hub_id: str
    columns: tuple[Column, ...]
    image: str = "url"
    check_sha: bool = False
    num_val: int | None = 2048
    group_by_image: bool = True
    verified: bool = True
    alternatives: tuple[tuple[str, ...], ...] = ()
    prepared_names: tuple[str, ...] = ()

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the prepared datasets this schema produces."""
        return self.prepared_names or (self.name,)


_URL = (Column("image_url", "str"),)
_URL_SHA = (Column("image_url", "str"), Column("image_sha256", "str"))


def _docs(kind: str) -> PixmoSchema:
    return PixmoSchema(
        f"pixmo_docs_{kind}",
        "allenai/pixmo-docs",
        (Column("image", "image"), Column("image_id", "str"), Column("questions", "qa")),
        image="embedded",
        num_val=1024,
        group_by_image=False,
    )


SCHEMAS: dict[str, PixmoSchema] = {
    s.name: s
    for s in (
        PixmoSchema(
            "pixmo_cap",
            "allenai/pixmo-cap",
            _URL + (Column("caption", "str"), Column("transcripts", "str_list")),
        ),
        PixmoSchema(
            "pixmo_ask_model_anything",
            "allenai/pixmo-ask-model-anything",
            _URL_SHA + (Column("question", "str"), Column("answer", "str")),
            check_sha=True,
        ),
        PixmoSchema(
            "pixmo_cap_qa",
            "allenai/pixmo-cap-qa",
            _URL
            + (
                Column("image_sha256", "str", False),
                Column("messages", "str_list", False),
                Column("question", "str", False),
                Column("answer", "str", False),
            ),
            verified=False,
            alternatives=(("messages",), ("question", "answer")),
        ),
        PixmoSchema(
            "pixmo_points",
            "allenai/pixmo-points",
            _URL_SHA
            + (
                Column("points", "points"),
                Column("count", "int"),
                Column("label", "str"),
                Column("collection_method", "str"),
            ),
            check_sha=True,
            prepared_names=("pixmo_points", "pixmo_points_high_freq"),
        ),
        PixmoSchema(
            "pixmo_points_eval",
            "allenai/pixmo-points-eval",
            _URL_SHA
            + (
                Column("points", "points"),
                Column("masks", "any"),
                Column("label", "str"),
                Column("count", "int", False),
            ),
            check_sha=True,
            num_val=None,
            group_by_image=False,
            verified=False,
        ),
        PixmoSchema(
            "pixmo_count",
            "allenai/pixmo-count",
            _URL_SHA + (Column("count", "int"), Column("points", "points"), Column("label", "str")),
            num_val=540,
            group_by_image=False,
        ),
        PixmoSchema(
            "pixmo_point_explanations",
            "allenai/pixmo-point-explanations",
            _URL_SHA
            + (
                Column("question", "str"),
                Column("response", "str"),
                Column("parsed_response", "str"),
                Column("alt_text", "str_list"),
                Column("inline_text", "str_list"),
                Column("points", "points_list"),
            ),
            check_sha=True,
            num_val=1024,
        ),
        _docs("charts"),
        _docs("tables"),
        _docs("diagrams"),
        _docs("other"),
        PixmoSchema(
            "pixmo_clocks",
            "allenai/pixmo-clocks",
            _URL
            + (
                Column("hour", "int"),
                Column("minute", "int"),
                Column("second", "int"),
                Column("image_sha256", "str", False),
                Column("time_format", "str", False),
                Column("shows_seconds", "bool", False),
            ),
            verified=False,
        ),
    )
}


def get_schema(name: str) -> PixmoSchema:
    if name not in SCHEMAS:
        raise ValueError(f"unknown PixMo dataset {name!r}; known: {', '.join(sorted(SCHEMAS))}")
    return SCHEMAS[name]


def _is_str(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _is_list(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_num(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)


def _is_point_struct(t) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_struct(t)
        and {"x", "y"} <= {f.name for f in t}
        and _is_num(t.field("x").type)
        and _is_num(t.field("y").type)
    )


def _is_points(t) -> bool:
    """list<struct<x, y>> (rows of the hub) or struct<x: list, y: list> (a HF Sequence of a dict)."""
    import pyarrow as pa

    if _is_list(t):
        return _is_point_struct(t.value_type) or pa.types.is_null(t.value_type)
    return (
        pa.types.is_struct(t)
        and {"x", "y"} <= {f.name for f in t}
        and all(_is_list(t.field(k).type) and _is_num(t.field(k).type.value_type) for k in "xy")
    )


def _is_qa(t) -> bool:
    import pyarrow as pa

    if pa.types.is_struct(t):  # HF Sequence({question, answer}) -> struct of lists
        names = {f.name for f in t}
        return {"question", "answer"} <= names and all(
            _is_list(t.field(k).type) and _is_str(t.field(k).type.value_type) for k in ("question", "answer")
        )
    return (
        _is_list(t)
        and pa.types.is_struct(t.value_type)
        and {"question", "answer"} <= {f.name for f in t.value_type}
    )


def _is_image(t) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and "bytes" in {f.name for f in t}


def _is_int(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_null(t)


def _is_bool(t) -> bool:
    import pyarrow as pa

    return pa.types.is_boolean(t) or pa.types.is_null(t)


_KIND_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "str": ("string", _is_str),
    "int": ("integer", _is_int),
    "float": ("number", _is_num),
    "bool": ("bool", _is_bool),
    "str_list": ("list<string>", lambda t: _is_list(t) and _is_str(t.value_type)),
    "points": ("list<struct<x: number, y: number>>", _is_points),
    "points_list": (
        "list<list<struct<x: number, y: number>>>",
        lambda t: _is_list(t) and _is_points(t.value_type),
    ),
    "qa": ("list<struct<question: string, answer: string>>", _is_qa),
    "image": ("struct<bytes: binary, path: string> or binary", _is_image),
    "any": ("any", lambda t: True),
}


def check_parquet_schema(
    schema: PixmoSchema, path: str | Path, *, allow_extra_columns: bool = False
) -> list[str]:
    """The schema's columns present in the parquet file ``path``; raises :class:`SchemaError` for a
    missing required column, an unknown column (unless ``allow_extra_columns`` or the schema is
    unverified) or a column of the wrong type, naming the file and the column."""
    import pyarrow.parquet as pq

    try:
        arrow_schema = pq.read_schema(path)
    except Exception as e:
        raise SchemaError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    present = {f.name: f.type for f in arrow_schema}
    known = {c.name for c in schema.columns}
    for col in schema.columns:
        if col.required and col.name not in present:
            raise SchemaError(
                f"{path}: missing column {col.name!r} ({schema.name} needs "
                f"{', '.join(c.name for c in schema.columns if c.required)})"
            )
    if schema.alternatives and not any(all(c in present for c in alt) for alt in schema.alternatives):
        options = " or ".join("+".join(alt) for alt in schema.alternatives)
        raise SchemaError(f"{path}: missing column(s) {options} ({schema.name})")
    unknown = [n for n in present if n not in known and not n.startswith("__index_level_")]
    if unknown and schema.verified and not allow_extra_columns:
        raise SchemaError(
            f"{path}: unknown column {unknown[0]!r} for {schema.name} (known: {', '.join(sorted(known))});"
            " pass allow_extra_columns=True (--allow_extra_columns) to ignore it"
        )
    for name, arrow_type in present.items():
        col = schema.column(name)
        if col is None:
            continue
        expected, ok = _KIND_CHECKS[col.kind]
        if not ok(arrow_type):
            raise SchemaError(
                f"{path}: column {name!r} has type {arrow_type}, expected {expected} ({schema.name})"
            )
    return [n for n in present if n in known]


def find_parquet_files(parquet_dir: str | Path) -> dict[str, list[Path]]:
    """Parquet files under ``parquet_dir`` by split. The split is the first of ``train``, ``validation``
    (``val``), ``test`` that names a folder on the path or starts the file name (hub layout
    ``train-00000-of-00004.parquet``); files naming no split are ``train``."""
    root = Path(parquet_dir)
    if root.is_file():
        files = [root]
        root = root.parent
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    else:
        raise FileNotFoundError(f"no parquet folder or file at {root}")
    if not files:
        raise FileNotFoundError(f"no *.parquet files under {root}")
    by_split: dict[str, list[Path]] = {}
    for path in files:
        split = "train"
        parts = [p.lower() for p in path.relative_to(root).parts]
        for part in parts[:-1] + [re.split(r"[-_.]", parts[-1])[0]]:
            if part in _SPLIT_ALIASES:
                split = _SPLIT_ALIASES[part]
                break
        by_split.setdefault(split, []).append(path)
    return by_split


def _points_array(value) -> list[list[float]]:
    """Parquet points (list of {x, y} or {x: [...], y: [...]}) -> [[x, y], ...]."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [[float(x), float(y)] for x, y in zip(value["x"], value["y"])]
    return [[float(p["x"]), float(p["y"])] for p in value]


def _normalise(col: Column, value):
    if value is None:
        return None
    if col.kind == "points":
        return _points_array(value)
    if col.kind == "points_list":
        return [_points_array(v) for v in value]
    if col.kind == "qa":
        if isinstance(value, Mapping):
            return [{"question": q, "answer": a} for q, a in zip(value["question"], value["answer"])]
        return [{"question": v["question"], "answer": v["answer"]} for v in value]
    if col.kind == "image":
        return value["bytes"] if isinstance(value, Mapping) else value
    return value


def iter_parquet_rows(
    schema: PixmoSchema, files: Iterable[Path], *, allow_extra_columns: bool = False, batch_rows: int = 4096
) -> Iterable[dict]:
    """Normalised rows of parquet files (schema-checked first): points become ``[[x, y], ...]``,
    Docs questions a list of ``{question, answer}``, embedded images their bytes."""
    import pyarrow.parquet as pq

    files = list(files)
    columns = {f: check_parquet_schema(schema, f, allow_extra_columns=allow_extra_columns) for f in files}
    for path in files:
        cols = [schema.column(n) for n in columns[path]]
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns[path]):
            for row in batch.to_pylist():
                yield {c.name: _normalise(c, row.get(c.name)) for c in cols}


def read_parquet(
    schema: PixmoSchema | str, parquet_dir: str | Path, *, allow_extra_columns: bool = False
) -> dict[str, list[dict]]:
    """All rows of a local parquet folder by split (see :func:`find_parquet_files`)."""
    schema = get_schema(schema) if isinstance(schema, str) else schema
    return {
        split: list(iter_parquet_rows(schema, files, allow_extra_columns=allow_extra_columns))
        for split, files in find_parquet_files(parquet_dir).items()
    }


# ----------------------------------------------------------------------------------------------
# Grouping

_IMAGE_COLUMNS = ("image_url", "image_sha256", "image", "image_path")


def group_by_image(
    rows: Iterable[Mapping[str, Any]], *, key: str = "image_url", group: bool = True
) -> list[dict]:
    """Rows -> one group per image (``key`` value) in first-appearance order: ``{image_url,
    image_sha256, image (embedded bytes, if any), annotations: [row without the image columns]}``.
    With ``group=False`` every row is its own group. The first row's ``image_sha256`` wins."""
    groups: dict[Any, dict] = {}
    out: list[dict] = []
    for row in rows:
        ann = {k: v for k, v in row.items() if k not in _IMAGE_COLUMNS}
        k = row.get(key)
        if group and k in groups:
            groups[k]["annotations"].append(ann)
            continue
        entry = {c: row[c] for c in _IMAGE_COLUMNS if c in row}
        entry["annotations"] = [ann]
        out.append(entry)
        if group:
            groups[k] = entry
    return out


def detect_point_units(points: Iterable[Sequence[Sequence[float]]]) -> str | None:
    """``"pixels"`` if any coordinate exceeds 100, ``"percent"`` if there are points and none does,
    ``None`` without points (open question 13.2; pixel data of images above ~100 px always has some
    coordinate above 100)."""
    seen = False
    for pts in points:
        for x, y in pts:
            seen = True
            if x > 100 or y > 100:
                return "pixels"
    return "percent" if seen else None


def annotation_points(schema_name: str, annotations: Iterable[Mapping]) -> Iterable[list]:
    """The point lists of a group's annotations (for unit detection)."""
    for ann in annotations:
        if schema_name == "pixmo_point_explanations":
            yield from (ann.get("points") or [])
        elif "points" in ann:
            yield ann.get("points") or []


# ----------------------------------------------------------------------------------------------
# Records -> examples


def _need(record: Mapping, ann: Mapping, field: str):
    if field not in ann or ann[field] is None:
        raise BadRecordError(
            f"{record.get('dataset', '?')} record {record.get('record_index', '?')} "
            f"({record.get('image_url', '')}): annotation has no {field!r}"
        )
    return ann[field]


def _annotations(record: Mapping) -> list[Mapping]:
    anns = record.get("annotations")
    if not anns:
        raise BadRecordError(
            f"{record.get('dataset', '?')} record {record.get('record_index', '?')}: no annotations"
        )
    return anns


def _base(record: Mapping) -> dict:
    if record.get("image") is None:
        raise BadRecordError(
            f"{record.get('dataset', '?')} record {record.get('record_index', '?')}: no image"
        )
    meta = {"image_url": record.get("image_url", ""), "dataset": record.get("dataset", "")}
    return {"image": record["image"], "metadata": meta}


def _scale_kwargs(record: Mapping) -> dict:
    return {"point_scale": 100} if record.get("point_units") == "percent" else {}


def _points(record: Mapping, ann: Mapping) -> np.ndarray:
    return np.asarray(_need(record, ann, "points"), np.float64).reshape(-1, 2)


def cap_example(record: Mapping, rng: np.random.RandomState, *, mode: str = "captions") -> dict:
    """PixMo-Cap. ``captions``: the caption (``long_caption``); ``transcript_and_caption`` (stage 1):
    the caption plus one random transcript (``transcript``), packed."""
    ann = _annotations(record)[0]
    messages = [{"text": _need(record, ann, "caption"), "style": "long_caption"}]
    if mode == "transcript_and_caption":
        transcripts = _need(record, ann, "transcripts")
        if transcripts:
            messages.append({"text": transcripts[rng.randint(0, len(transcripts))], "style": "transcript"})
    elif mode != "captions":
        raise ValueError(f"unknown PixMo-Cap mode {mode!r}")
    return dict(_base(record), message_list=messages)


def ask_model_anything_example(record: Mapping, rng: np.random.RandomState) -> dict:
    """PixMo-AskModelAnything: every QA pair of the image (``user_qa``), "how many" questions prefixed
    with a random no-pointing request."""
    messages = [
        {"question": _need(record, a, "question"), "answer": _need(record, a, "answer"), "style": "user_qa"}
        for a in _annotations(record)
    ]
    for m in messages:
        m["question"] = no_point_prefix(m["question"], rng)
    return dict(_base(record), message_list=messages)


def cap_qa_example(record: Mapping, rng: np.random.RandomState) -> dict:
    """PixMo-CapQA: every conversation of the image (``synthetic_qa``); user turns matching "how
    many" get a no-pointing prefix (per matching turn; the released code used the first turn's text)."""
    convs = []
    for ann in _annotations(record):
        msgs = ann.get("messages")
        if msgs is None:
            msgs = [_need(record, ann, "question"), _need(record, ann, "answer")]
        msgs = list(msgs)
        if not msgs or len(msgs) % 2:
            raise BadRecordError(
                f"{record.get('dataset')} record {record.get('record_index')}: a conversation "
                f"needs alternating user/assistant turns, got {len(msgs)}"
            )
        for ix in range(0, len(msgs), 2):
            msgs[ix] = no_point_prefix(msgs[ix], rng)
        convs.append({"messages": msgs, "style": "synthetic_qa"})
    return dict(_base(record), message_list=convs)


def points_example(record: Mapping, rng: np.random.RandomState, *, style: str = "pointing") -> dict:
    """PixMo-Points / Count: one conversation per label (``pointing`` or ``point_count``). Count rows
    without points (published val/test) keep only the count in ``metadata`` (inference only)."""
    messages, counts = [], []
    for ann in _annotations(record):
        pts = _points(record, ann)
        count = ann.get("count")
        counts.append(count)
        msg: dict[str, Any] = {"label": _need(record, ann, "label"), "style": style}
        if count is None or len(pts) == count:
            msg.update(points=pts, **_scale_kwargs(record))
        messages.append(msg)
    base = _base(record)
    base["metadata"]["count"] = counts[0] if len(counts) == 1 else counts
    if len(messages) == 1:
        return dict(base, **messages[0])
    return dict(base, message_list=messages)


def points_eval_example(record: Mapping, rng: np.random.RandomState) -> dict:
    """PixMo-Points-Eval: one label per record (``pointing``); points and masks go to ``metadata``."""
    ann = _annotations(record)[0]
    pts = _points(record, ann)
    base = _base(record)
    base["metadata"].update(points=pts, masks=ann.get("masks"), point_units=record.get("point_units"))
    return dict(
        base, label=_need(record, ann, "label"), points=pts, style="pointing", **_scale_kwargs(record)
    )


def point_explanations_example(
    record: Mapping, rng: np.random.RandomState, *, split_groups: bool = True
) -> dict:
    """PixMo-Point-Explanations (``point_qa``): answers with ``<|POINT|>`` slots filled by point markup.
    The original splits an image's conversations into two examples; with ``split_groups`` one of the two
    halves is drawn at random instead (one record per image). Rows without ``parsed_response`` are
    dropped at preparation."""
    messages = []
    for ann in _annotations(record):
        answer = _need(record, ann, "parsed_response")
        alts, inlines, pts = ann.get("alt_text") or [], ann.get("inline_text") or [], ann.get("points") or []
        if not (len(alts) == len(inlines) == len(pts)):
            raise BadRecordError(
                f"{record.get('dataset')} record {record.get('record_index')}: alt_text, "
                "inline_text and points differ in length"
            )
        anns = []
        for p, i, a in zip(pts, inlines, alts):
            p = np.asarray(p, np.float64).reshape(-1, 2)
            if record.get("point_units") == "pixels":
                p = p / np.array([record["width"] / 100, record["height"] / 100])
            anns.append({"points": p, "inline_text": i, "alt_text": a})
        messages.append(
            {
                "question": _need(record, ann, "question"),
                "answer": answer,
                "answer_annotations": anns,
                "style": "point_qa",
            }
        )
    if split_groups and len(messages) > 1:
        n = len(messages) // 2 + len(messages) % 2
        messages = messages[:n] if rng.randint(0, 2) == 0 else messages[n:]
    return dict(_base(record), message_list=messages)


def docs_example(record: Mapping, rng: np.random.RandomState, *, kind: str) -> dict:
    """PixMo-Docs: every QA pair of the document (``pixmo_docs_{kind}``)."""
    ann = _annotations(record)[0]
    qas = _need(record, ann, "questions")
    if not qas:
        raise BadRecordError(f"{record.get('dataset')} record {record.get('record_index')}: no questions")
    base = _base(record)
    base["metadata"]["image_id"] = ann.get("image_id")
    return dict(
        base,
        message_list=[
            {"question": qa["question"], "answer": qa["answer"], "style": f"pixmo_docs_{kind}"} for qa in qas
        ],
    )


def clock_text(
    hour: int,
    minute: int,
    second: int | None,
    time_format: str | None = None,
    shows_seconds: bool | None = None,
) -> str:
    """The original ``PixMoClocks`` target: ``"The time shown is 3:07"`` (+ ``":09"`` with seconds,
    ``" PM"`` for the AM/PM format), or ``"The time is not shown in the image."``. Noon is ``PM``
    (the original labels 12:xx ``AM``)."""
    time_format = time_format or "12 hour clock (without AM/PM)"
    if time_format == "The time is not shown":
        return "The time is not shown in the image."
    if shows_seconds is None:
        shows_seconds = second is not None and second >= 0
    hour_12 = 12 if hour % 12 == 0 else hour % 12
    text = f"{hour_12}:{minute:02d}"
    if shows_seconds:
        text += f":{int(second or 0):02d}"
    if time_format == "12 hour clock (with AM/PM)":
        text += " PM" if hour >= 12 else " AM"
    elif time_format != "12 hour clock (without AM/PM)":
        raise ValueError(f"unknown clock time_format {time_format!r}")
    return "The time shown is " + text


def clocks_example(record: Mapping, rng: np.random.RandomState) -> dict:
    """PixMo-Clocks (``clocks``): prompt "What time is being shown?", target from :func:`clock_text`."""
    ann = _annotations(record)[0]
    hour, minute = int(_need(record, ann, "hour")), int(_need(record, ann, "minute"))
    second = ann.get("second")
    try:
        text = clock_text(
            hour,
            minute,
            None if second is None else int(second),
            ann.get("time_format"),
            ann.get("shows_seconds"),
        )
    except ValueError as e:
        raise BadRecordError(f"{record.get('dataset')} record {record.get('record_index')}: {e}") from None
    base = _base(record)
    base["metadata"].update(hour=hour, minute=minute, second=-1 if second is None else int(second))
    return dict(base, prompt="What time is being shown?", text=text, style="clocks")


@dataclasses.dataclass(frozen=True)
class Task:
    """A training / evaluation task: which prepared dataset it reads and how a record becomes an example."""

    name: str
    prepared: str
    to_example: Callable[..., dict]
    options: tuple[tuple[str, Any], ...] = ()

    def __call__(self, record: Mapping, rng: np.random.RandomState) -> dict:
        return self.to_example(record, rng, **dict(self.options))


def _task(name: str, prepared: str, fn: Callable[..., dict], **options) -> Task:
    return Task(name, prepared, fn, tuple(sorted(options.items())))


PIXMO_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _task("pixmo_cap", "pixmo_cap", cap_example, mode="captions"),
        _task("pixmo_cap_transcript", "pixmo_cap", cap_example, mode="transcript_and_caption"),
        _task("pixmo_ask_model_anything", "pixmo_ask_model_anything", ask_model_anything_example),
        _task("pixmo_cap_qa", "pixmo_cap_qa", cap_qa_example),
        _task("pixmo_pointing_explanations", "pixmo_point_explanations", point_explanations_example),
        # The original swaps the two styles of PixMo-Points (MOLMO_SPEC 12.21); we do not.
        _task("pixmo_points", "pixmo_points", points_example, style="pointing"),
        _task("pixmo_points_counting", "pixmo_points", points_example, style="point_count"),
        _task("pixmo_points_high_freq", "pixmo_points_high_freq", points_example, style="pointing"),
        _task(
            "pixmo_points_high_freq_counting", "pixmo_points_high_freq", points_example, style="point_count"
        ),
        _task("pixmo_count", "pixmo_count", points_example, style="pointing"),
        _task("pixmo_count_counting", "pixmo_count", points_example, style="point_count"),
        _task("pixmo_points_eval", "pixmo_points_eval", points_eval_example),
        *(
            _task(f"pixmo_docs_{k}", f"pixmo_docs_{k}", docs_example, kind=k)
            for k in ("charts", "tables", "diagrams", "other")
        ),
        _task("pixmo_clocks", "pixmo_clocks", clocks_example),
    )
}


def annotations_to_json(annotations: Sequence[Mapping]) -> str:
    """Annotation rows -> compact JSON (numpy arrays as lists)."""
    return json.dumps(list(annotations), separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        raise TypeError("bytes in annotations (images go in the record's image field)")
    raise TypeError(f"cannot store {type(value).__name__} in annotations")
