"""Users' own data as JSONL: one JSON object per line, one image each.

Schema (``image`` and one of the three annotation forms are required)::

    {"image": "imgs/cat.jpg",                    # path relative to the JSONL file, absolute, or file:// URL
     "messages": ["What is this?", "A cat."],    # one conversation: user, assistant, user, assistant, ...
     "style": "demo",                            # optional style prefix word (default "demo": no prefix)
     "weight": 1.0}                              # optional loss weight

    {"image": "...", "conversations": [["Q1", "A1"], ["Q2", "A2"]]}     # several conversations (packed)

    {"image": "...", "label": "cat", "points": [[120.5, 80.0], [300, 210]],
     "point_units": "pixels",                    # "pixels" (default) or "percent" (0-100 of width / height)
     "style": "pointing"}                        # "pointing" (default) or "point_count"

Unknown keys are kept in the record's annotations (and ignored by the example builder).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import numpy as np

from molmo_jax.data.pixmo import BadRecordError

_FORMS = ("messages", "conversations", "points")


class JsonlError(ValueError):
    """A JSONL line that does not follow the schema (names the file and line)."""


def _check_conversation(conv, where: str) -> list[str]:
    if not isinstance(conv, list) or not conv or len(conv) % 2 or not all(isinstance(m, str) for m in conv):
        raise JsonlError(
            f"{where}: a conversation is a non-empty list of strings alternating user / assistant"
        )
    return conv


def read_jsonl(path: str | Path) -> list[dict]:
    """Records (``image_path``, ``image_url``, ``annotations``) of a JSONL file; raises
    :class:`JsonlError` naming the line for any line that does not follow the schema."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise JsonlError(f"{where}: not JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("image"), str):
                raise JsonlError(f"{where}: needs an 'image' path")
            forms = [k for k in _FORMS if k in row]
            if len(forms) != 1:
                raise JsonlError(
                    f"{where}: needs exactly one of 'messages', 'conversations' or 'label' + 'points'"
                )
            if "messages" in row:
                _check_conversation(row["messages"], where)
            elif "conversations" in row:
                if not isinstance(row["conversations"], list) or not row["conversations"]:
                    raise JsonlError(f"{where}: 'conversations' is a non-empty list of conversations")
                for conv in row["conversations"]:
                    _check_conversation(conv, where)
            else:
                if not isinstance(row.get("label"), str):
                    raise JsonlError(f"{where}: 'points' needs a 'label'")
                pts = np.asarray(row["points"], dtype=np.float64) if row["points"] else np.zeros((0, 2))
                if pts.ndim != 2 or pts.shape[1] != 2:
                    raise JsonlError(f"{where}: 'points' is a list of [x, y] pairs")
                if row.get("point_units", "pixels") not in ("pixels", "percent"):
                    raise JsonlError(f"{where}: 'point_units' is 'pixels' or 'percent'")
            image = row["image"]
            if image.startswith("file://"):
                image_path = Path(url2pathname(urlsplit(image).path))
            else:
                image_path = Path(image) if Path(image).is_absolute() else path.parent / image
            ann = {k: v for k, v in row.items() if k != "image"}
            records.append(
                {
                    "image_path": str(image_path),
                    "image_url": image_path.resolve().as_uri(),
                    "annotations": [ann],
                }
            )
    if not records:
        raise JsonlError(f"{path}: no examples")
    return records


def jsonl_example(record: Mapping, rng: np.random.RandomState) -> dict:
    """A JSONL record -> a processor example (see the module docstring)."""
    image = record.get("image") if record.get("image") is not None else record.get("image_path")
    if image is None or not record.get("annotations"):
        raise BadRecordError(
            f"{record.get('dataset')} record {record.get('record_index')}: no image or annotation"
        )
    ann = record["annotations"][0]
    out: dict = {"image": image, "metadata": {"image_url": record.get("image_url", "")}}
    if ann.get("weight") is not None:
        out["weight"] = float(ann["weight"])
    if "messages" in ann:
        return dict(
            out, message_list=[{"messages": list(ann["messages"]), "style": ann.get("style", "demo")}]
        )
    if "conversations" in ann:
        style = ann.get("style", "demo")
        return dict(out, message_list=[{"messages": list(c), "style": style} for c in ann["conversations"]])
    pts = np.asarray(ann["points"], np.float64).reshape(-1, 2)
    out.update(label=ann["label"], points=pts, style=ann.get("style", "pointing"))
    if ann.get("point_units") == "percent":
        out["point_scale"] = 100
    return out
