"""Academic benchmarks from local files: readers, example builders and prompt styles (MOLMO_SPEC 6.4, 10.2).

Each reader returns records in the prepared-record form (``image`` bytes or ``image_path``,
``image_url``, ``annotations`` = ``[row]``): one record per question, usable directly as a pipeline
source or written with ``prepare_records`` (``python -m molmo_jax.cli.prepare academic``).

Expected local layouts (``ROOT`` is the folder given to the reader; ``SPLIT`` is ``train``,
``validation`` or ``test``):

=================  ========================================================================================
dataset (task)     layout
=================  ========================================================================================
chart_qa           HF ``HuggingFaceM4/ChartQA`` parquet: ``ROOT/**/SPLIT-*.parquet`` with ``image``,
                   ``query``, ``label`` (list), optional ``human_or_machine``; or the official release:
                   ``ROOT/SPLIT/SPLIT_{human,augmented}.json`` (``imgname, query, label``)
                   + ``ROOT/SPLIT/png/``
doc_qa             HF ``lmms-lab/DocVQA`` (config DocVQA) parquet: ``image``, ``question``, ``answers``;
                   or official ``ROOT/SPLIT_v1.0.json`` (``data: [{question, image, answers}]``), images
                   relative to ``ROOT``
info_qa            HF ``lmms-lab/DocVQA`` (config InfographicVQA) parquet: ``image``, ``question``,
                   ``answers``; or official ``ROOT/infographicsVQA_SPLIT_v1.0.json``
                   (``data: [{question, image_local_name, answers}]``) + ``ROOT/infographicsvqa_images/``
text_vqa           HF ``lmms-lab/textvqa`` parquet: ``image``, ``question``, ``answers``; or official
                   ``ROOT/TextVQA_0.5.1_SPLIT.json`` (``data: [{question, image_id, answers}]``) +
                   ``ROOT/train_images/{image_id}.jpg`` (train and validation share that folder)
coco_2014_vqa      HF ``lmms-lab/VQAv2`` parquet: ``image``, ``question``, ``answers`` (list of
                   ``{answer}``) or ``multiple_choice_answer``; or official
                   ``ROOT/v2_OpenEnded_mscoco_{train,val}2014_questions.json``
                   (+ ``v2_mscoco_*_annotations.json``)
                   + ``ROOT/{train,val}2014/COCO_{train,val}2014_{image_id:012d}.jpg``
ai2_diagram        HF ``lmms-lab/ai2d`` parquet: ``image``, ``question``, ``options`` (list), ``answer``
                   (index as a string or int)
countbench_qa      HF CountBenchQA parquet: ``image``, ``question`` (or ``text``), ``number``
real_world_qa      HF ``xai-org/RealworldQA`` parquet: ``image``, ``question``, ``answer``
=================  ========================================================================================

``validation`` also matches files named ``val``. Parquet ``image`` columns may be HF image structs
(``{bytes, path}``) or raw bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from molmo_jax.data.pixmo import BadRecordError, Task, find_parquet_files

_HF_MC_INSTRUCTIONS = (
    "Please answer directly with only the letter of the correct option and nothing else.",
    "Please answer directly with a single word or number.",
)


def _read_parquet_rows(root: Path, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    files = find_parquet_files(root).get(split)
    if not files:
        raise FileNotFoundError(f"no {split} parquet files under {root}")
    rows = []
    for f in files:
        rows += pq.read_table(f).to_pylist()
    return rows


def _image_fields(value: Any, root: Path) -> dict:
    """A parquet image value or a path -> ``image`` bytes or ``image_path``."""
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return {"image": value["bytes"]}
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return {"image": bytes(value)}
    if isinstance(value, str) and value:
        path = Path(value) if Path(value).is_absolute() else root / value
        return {"image_path": str(path), "image_url": path.as_uri()}
    raise BadRecordError(f"row has no usable image ({type(value).__name__})")


def _column(row: Mapping, *names: str, default: Any = ...):
    for n in names:
        if n in row and row[n] is not None:
            return row[n]
    if default is not ...:
        return default
    raise BadRecordError(f"row has none of the columns {names} (has {', '.join(row)})")


def _record(name: str, index: int, image: dict, annotation: dict) -> dict:
    return {"image_url": "", **image, "annotations": [annotation], "dataset": name, "record_index": index}


def _answers(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [a["answer"] if isinstance(a, Mapping) else str(a) for a in value]


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"missing {path}") from None


def _split_names(split: str) -> tuple[str, ...]:
    return ("validation", "val") if split == "validation" else (split,)


# Readers ----------------------------------------------------------------------------------------


def _vqa_parquet(
    name: str,
    question: tuple[str, ...] = ("question",),
    answers: tuple[str, ...] = ("answers", "answer", "multiple_choice_answer"),
    extra: Callable[[Mapping], dict] | None = None,
):
    def read(root: Path, split: str) -> list[dict]:
        out = []
        for i, row in enumerate(_read_parquet_rows(root, split)):
            ann = {
                "question": _column(row, *question),
                "answers": _answers(_column(row, *answers, default=None)),
            }
            if extra is not None:
                ann.update(extra(row))
            out.append(_record(name, i, _image_fields(_column(row, "image", "image_path"), root), ann))
        return out

    return read


def _read_chart_qa(root: Path, split: str) -> list[dict]:
    for s in _split_names(split):
        folder = root / s
        if (folder / f"{s}_human.json").exists():
            out = []
            for kind in ("human", "augmented"):
                path = folder / f"{s}_{kind}.json"
                if not path.exists():
                    continue
                for row in _json(path):
                    ann = {
                        "question": row["query"],
                        "answers": _answers(row["label"]),
                        "human": kind == "human",
                    }
                    out.append(
                        _record("chart_qa", len(out), _image_fields(f"{s}/png/{row['imgname']}", root), ann)
                    )
            return out
    return _vqa_parquet(
        "chart_qa",
        ("query", "question"),
        ("label", "answers", "answer"),
        lambda r: {"human": r.get("human_or_machine", 0) == 0},
    )(root, split)


def _docvqa_json(name: str, pattern: str, image_key: str, image_dir: str):
    parquet = _vqa_parquet(name)

    def read(root: Path, split: str) -> list[dict]:
        for s in _split_names(split):
            path = root / pattern.format(split=s)
            if path.exists():
                return [
                    _record(
                        name,
                        i,
                        _image_fields(f"{image_dir}{row[image_key]}", root),
                        {"question": row["question"], "answers": _answers(row.get("answers"))},
                    )
                    for i, row in enumerate(_json(path)["data"])
                ]
        return parquet(root, split)

    return read


def _read_text_vqa(root: Path, split: str) -> list[dict]:
    for s in _split_names(split):
        path = root / f"TextVQA_0.5.1_{s}.json"
        if path.exists():
            folder = "test_images" if s == "test" else "train_images"
            return [
                _record(
                    "text_vqa",
                    i,
                    _image_fields(f"{folder}/{row['image_id']}.jpg", root),
                    {"question": row["question"], "answers": _answers(row.get("answers"))},
                )
                for i, row in enumerate(_json(path)["data"])
            ]
    return _vqa_parquet("text_vqa")(root, split)


def _read_vqa2(root: Path, split: str) -> list[dict]:
    coco = {"train": "train2014", "validation": "val2014", "test": "test2015"}[split]
    qpath = root / f"v2_OpenEnded_mscoco_{coco}_questions.json"
    if qpath.exists():
        apath = root / f"v2_mscoco_{coco}_annotations.json"
        answers = (
            {a["question_id"]: _answers(a["answers"]) for a in _json(apath)["annotations"]}
            if apath.exists()
            else {}
        )
        return [
            _record(
                "coco_2014_vqa",
                i,
                _image_fields(f"{coco}/COCO_{coco}_{q['image_id']:012d}.jpg", root),
                {
                    "question": q["question"],
                    "answers": answers.get(q["question_id"], []),
                    "question_id": q["question_id"],
                },
            )
            for i, q in enumerate(_json(qpath)["questions"])
        ]
    return _vqa_parquet("coco_2014_vqa")(root, split)


def _read_ai2d(root: Path, split: str) -> list[dict]:
    out = []
    for i, row in enumerate(_read_parquet_rows(root, split)):
        ann = {
            "question": _column(row, "question"),
            "options": list(_column(row, "options", "choices")),
            "answer_idx": int(_column(row, "answer", "answer_idx")),
        }
        out.append(_record("ai2_diagram", i, _image_fields(_column(row, "image"), root), ann))
    return out


def _read_countbench(root: Path, split: str) -> list[dict]:
    return [
        _record(
            "countbench_qa",
            i,
            _image_fields(_column(row, "image"), root),
            {"question": _column(row, "question", "text"), "count": int(_column(row, "number", "count"))},
        )
        for i, row in enumerate(_read_parquet_rows(root, split))
    ]


def _read_real_world_qa(root: Path, split: str) -> list[dict]:
    return [
        _record(
            "real_world_qa",
            i,
            _image_fields(_column(row, "image"), root),
            {"question": _column(row, "question"), "answers": _answers(_column(row, "answer", "answers"))},
        )
        for i, row in enumerate(_read_parquet_rows(root, split))
    ]


# Example builders -------------------------------------------------------------------------------


def _base(record: Mapping) -> dict:
    image = record.get("image") if record.get("image") is not None else record.get("image_path")
    if image is None:
        raise BadRecordError(f"{record.get('dataset')} record {record.get('record_index')}: no image")
    ann = record["annotations"][0]
    meta = {k: v for k, v in ann.items() if k not in ("question",)}
    meta["dataset"] = record.get("dataset")
    return {"image": image, "metadata": meta}


def vqa_example(record: Mapping, rng: np.random.RandomState, *, style: str) -> dict:
    """Short-answer VQA: ``question`` + reference ``answers`` (training target: the most frequent)."""
    ann = record["annotations"][0]
    out = dict(_base(record), question=ann["question"], style=style)
    if ann.get("answers"):
        out["answers"] = list(ann["answers"])
    return out


def ai2d_example(record: Mapping, rng: np.random.RandomState) -> dict:
    """AI2D multiple choice (``ai2_diagram``): options lettered A, B, ...; target the letter."""
    ann = record["annotations"][0]
    return dict(
        _base(record),
        question=ann["question"],
        options=list(ann["options"]),
        answer_idx=int(ann["answer_idx"]),
        style="ai2_diagram",
    )


def countbench_example(record: Mapping, rng: np.random.RandomState) -> dict:
    """CountBenchQA (``point_count``, evaluation only): the count is in ``metadata``."""
    ann = record["annotations"][0]
    out = dict(_base(record), question=ann["question"], style="point_count")
    out["metadata"]["count"] = int(ann["count"])
    return out


def real_world_qa_example(record: Mapping, rng: np.random.RandomState) -> dict:
    """RealWorldQA without its instruction sentence (the original ``real_world_qa_no_instruction``):
    ``eval_multiple_choice`` when the answer is an option letter, else ``eval_short_answer``."""
    ann = record["annotations"][0]
    question = ann["question"]
    for text in _HF_MC_INSTRUCTIONS:
        question = question.replace(text, "")
    answers = list(ann.get("answers") or [])
    mc = bool(answers) and re.fullmatch("[A-F]", answers[0].strip()) is not None
    out = dict(
        _base(record), question=question.strip(), style="eval_multiple_choice" if mc else "eval_short_answer"
    )
    if answers:
        out["answers"] = answers
    return out


ACADEMIC_READERS: dict[str, Callable[[Path, str], list[dict]]] = {
    "chart_qa": _read_chart_qa,
    "doc_qa": _docvqa_json("doc_qa", "{split}_v1.0.json", "image", ""),
    "info_qa": _docvqa_json(
        "info_qa", "infographicsVQA_{split}_v1.0.json", "image_local_name", "infographicsvqa_images/"
    ),
    "text_vqa": _read_text_vqa,
    "coco_2014_vqa": _read_vqa2,
    "ai2_diagram": _read_ai2d,
    "countbench_qa": _read_countbench,
    "real_world_qa": _read_real_world_qa,
}


def _task(name: str, fn, **options) -> Task:
    return Task(name, name, fn, tuple(sorted(options.items())))


ACADEMIC_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _task("chart_qa", vqa_example, style="chart_qa"),
        _task("doc_qa", vqa_example, style="doc_qa"),
        _task("info_qa", vqa_example, style="info_qa"),
        _task("text_vqa", vqa_example, style="text_vqa"),
        _task("coco_2014_vqa", vqa_example, style="vqa2"),
        _task("ai2_diagram", ai2d_example),
        _task("countbench_qa", countbench_example),
        _task("real_world_qa", real_world_qa_example),
    )
}


def load_academic(name: str, root: str | Path, split: str = "validation") -> list[dict]:
    """Records of an academic dataset from its local files (layouts in the module docstring)."""
    if name not in ACADEMIC_READERS:
        raise ValueError(f"unknown academic dataset {name!r}; known: {', '.join(sorted(ACADEMIC_READERS))}")
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, got {split!r}")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{name}: no folder {root}")
    records = ACADEMIC_READERS[name](root, split)
    if not records:
        raise ValueError(f"{name}: no {split} examples under {root}")
    return records
