"""PixMo schemas, parquet reading, grouping by image and record -> example builders."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from data_fixtures import POINTS_SCHEMA, points_dataset, write_parquet

from molmo_jax.data import pixmo
from molmo_jax.preprocess import formatting as fmt


def _points_row(**kw):
    row = {
        "image_url": "http://x/a.jpg",
        "image_sha256": "0" * 64,
        "points": [{"x": 1.0, "y": 2.0}],
        "count": 1,
        "label": "cat",
        "collection_method": "pointing",
    }
    row.update(kw)
    return row


def test_every_dataset_has_a_schema_task_and_style():
    assert {
        "pixmo_cap",
        "pixmo_ask_model_anything",
        "pixmo_cap_qa",
        "pixmo_points",
        "pixmo_points_eval",
        "pixmo_count",
        "pixmo_point_explanations",
        "pixmo_docs_charts",
        "pixmo_docs_tables",
        "pixmo_docs_diagrams",
        "pixmo_docs_other",
        "pixmo_clocks",
    } <= set(pixmo.SCHEMAS)
    assert pixmo.SCHEMAS["pixmo_points"].outputs == ("pixmo_points", "pixmo_points_high_freq")
    for task in pixmo.PIXMO_TASKS.values():
        assert any(task.prepared in s.outputs for s in pixmo.SCHEMAS.values()), task.name
    with pytest.raises(ValueError, match="unknown PixMo dataset 'pixmo_nope'"):
        pixmo.get_schema("pixmo_nope")


def test_column_errors_name_the_file_and_column(tmp_path):
    schema = pixmo.SCHEMAS["pixmo_points"]
    good = write_parquet(tmp_path / "good.parquet", [_points_row()], POINTS_SCHEMA)
    assert set(pixmo.check_parquet_schema(schema, good)) == {f.name for f in POINTS_SCHEMA}

    missing = write_parquet(
        tmp_path / "missing.parquet", [{k: v for k, v in _points_row().items() if k != "label"}]
    )
    with pytest.raises(pixmo.SchemaError, match=r"missing\.parquet: missing column 'label'"):
        pixmo.check_parquet_schema(schema, missing)

    extra = write_parquet(tmp_path / "extra.parquet", [_points_row(source="web")])
    with pytest.raises(pixmo.SchemaError, match=r"extra\.parquet: unknown column 'source'"):
        pixmo.check_parquet_schema(schema, extra)
    assert "source" not in pixmo.check_parquet_schema(schema, extra, allow_extra_columns=True)

    typed = write_parquet(tmp_path / "typed.parquet", [_points_row(count="three")])
    with pytest.raises(
        pixmo.SchemaError, match=r"typed\.parquet: column 'count' has type string, expected integer"
    ):
        pixmo.check_parquet_schema(schema, typed)

    flat = write_parquet(tmp_path / "flat.parquet", [_points_row(points=[1.0, 2.0])])
    with pytest.raises(
        pixmo.SchemaError, match="column 'points' has type list<.*double>, expected list<struct<x"
    ):
        pixmo.check_parquet_schema(schema, flat)

    # CapQA (unverified): either messages or question + answer; extra columns are fine.
    capqa = pixmo.SCHEMAS["pixmo_cap_qa"]
    neither = write_parquet(tmp_path / "capqa.parquet", [{"image_url": "u", "note": "x"}])
    with pytest.raises(
        pixmo.SchemaError, match="capqa.parquet: missing column.*messages or question\\+answer"
    ):
        pixmo.check_parquet_schema(capqa, neither)
    ok = write_parquet(tmp_path / "capqa2.parquet", [{"image_url": "u", "messages": ["q", "a"], "note": "x"}])
    assert set(pixmo.check_parquet_schema(capqa, ok)) == {"image_url", "messages"}

    not_parquet = tmp_path / "junk.parquet"
    not_parquet.write_text("not parquet")
    with pytest.raises(pixmo.SchemaError, match="junk.parquet: not a readable parquet file"):
        pixmo.check_parquet_schema(schema, not_parquet)


def test_split_detection_and_row_normalisation(tmp_path):
    rows = [_points_row(points=[{"x": 10.0, "y": 20.0}, {"x": 30.5, "y": 40.0}])]
    write_parquet(tmp_path / "data" / "train-00000-of-00002.parquet", rows, POINTS_SCHEMA)
    write_parquet(tmp_path / "data" / "train-00001-of-00002.parquet", rows, POINTS_SCHEMA)
    write_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", rows, POINTS_SCHEMA)
    write_parquet(tmp_path / "test" / "shard.parquet", rows, POINTS_SCHEMA)
    files = pixmo.find_parquet_files(tmp_path)
    assert {k: len(v) for k, v in files.items()} == {"train": 2, "validation": 1, "test": 1}
    data = pixmo.read_parquet("pixmo_points", tmp_path)
    assert data["train"][0]["points"] == [[10.0, 20.0], [30.5, 40.0]] and len(data["train"]) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.parquet files"):
        pixmo.find_parquet_files(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no parquet folder or file"):
        pixmo.find_parquet_files(tmp_path / "nowhere")


def test_docs_qa_and_embedded_images_normalised(tmp_path):
    qa = pa.struct([("question", pa.list_(pa.string())), ("answer", pa.list_(pa.string()))])
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image), ("image_id", pa.string()), ("questions", qa)])
    rows = [
        {
            "image": {"bytes": b"\x89PNG", "path": None},
            "image_id": "d1",
            "questions": {"question": ["q1", "q2"], "answer": ["a1", "a2"]},
        }
    ]
    write_parquet(tmp_path / "validation-0.parquet", rows, schema)
    row = pixmo.read_parquet("pixmo_docs_charts", tmp_path)["validation"][0]
    assert row["image"] == b"\x89PNG"
    assert row["questions"] == [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]


def test_group_by_image_keeps_first_appearance_order_and_all_rows(tmp_path):
    parquet, urls = points_dataset(tmp_path, n_images=3, labels=("cat", "dog", "bird"))
    rows = pixmo.read_parquet("pixmo_points", parquet)["train"]
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    groups = pixmo.group_by_image(shuffled)
    first_seen = list(dict.fromkeys(r["image_url"] for r in shuffled))
    assert [g["image_url"] for g in groups] == first_seen and len(groups) == 3
    for g in groups:
        assert sorted(a["label"] for a in g["annotations"]) == ["bird", "cat", "dog"]
        assert "image_url" not in g["annotations"][0] and "image_sha256" not in g["annotations"][0]
    assert len(pixmo.group_by_image(rows, group=False)) == len(rows) == 9


def test_point_units_detected_from_the_data_range():
    assert pixmo.detect_point_units([[[10, 20]], [[99.5, 100]]]) == "percent"
    assert pixmo.detect_point_units([[[10, 20]], [[320, 40]]]) == "pixels"
    assert pixmo.detect_point_units([[], []]) is None


def _record(annotations, **kw):
    return {
        "image": b"img",
        "image_url": "u",
        "annotations": annotations,
        "dataset": "d",
        "record_index": 3,
        **kw,
    }


def test_points_examples_styles_units_and_packing():
    anns = [
        {"points": [[10.0, 20.0]], "count": 1, "label": "Cat"},
        {"points": [], "count": 0, "label": "dog"},
    ]
    rng = np.random.RandomState(0)
    ex = pixmo.PIXMO_TASKS["pixmo_points"](_record(anns, point_units="percent"), rng)
    assert [m["style"] for m in ex["message_list"]] == ["pointing", "pointing"]
    assert ex["message_list"][0]["point_scale"] == 100
    counting = pixmo.PIXMO_TASKS["pixmo_points_counting"](_record(anns, point_units="pixels"), rng)
    assert (
        counting["message_list"][0]["style"] == "point_count"
        and "point_scale" not in counting["message_list"][0]
    )
    convs, _ = fmt.format_example(counting, for_inference=False, rng=0, image_hw=(200, 100))
    assert convs[0][1] == ' Counting the <point x="10.0" y="10.0" alt="cat">cat</point> shows a total of 1.'
    assert convs[1][1] == " There are none."
    # PixMo-Count val/test rows have a count but no points: inference-only, count in metadata.
    count = pixmo.PIXMO_TASKS["pixmo_count_counting"](
        _record([{"points": [], "count": 4, "label": "car"}]), rng
    )
    assert "points" not in count and count["metadata"]["count"] == 4 and count["style"] == "point_count"


def test_text_examples():
    rng = np.random.RandomState(0)
    cap = pixmo.PIXMO_TASKS["pixmo_cap"](_record([{"caption": "C", "transcripts": ["t1", "t2"]}]), rng)
    assert cap["message_list"] == [{"text": "C", "style": "long_caption"}]
    stage1 = pixmo.PIXMO_TASKS["pixmo_cap_transcript"](
        _record([{"caption": "C", "transcripts": ["t1", "t2"]}]), rng
    )
    assert [m["style"] for m in stage1["message_list"]] == ["long_caption", "transcript"]
    assert stage1["message_list"][1]["text"] in ("t1", "t2")

    ama = pixmo.PIXMO_TASKS["pixmo_ask_model_anything"](
        _record([{"question": "How many cats?", "answer": "2"}, {"question": "Color?", "answer": "red"}]), rng
    )
    assert [m["style"] for m in ama["message_list"]] == ["user_qa", "user_qa"]
    assert ama["message_list"][0]["question"].endswith("How many cats?") and len(
        ama["message_list"][0]["question"]
    ) > len("How many cats?")
    assert ama["message_list"][1]["question"] == "Color?"

    capqa = pixmo.PIXMO_TASKS["pixmo_cap_qa"](
        _record([{"messages": ["q1", "a1", "how many dogs", "3"]}, {"question": "q", "answer": "a"}]), rng
    )
    assert capqa["message_list"][1] == {"messages": ["q", "a"], "style": "synthetic_qa"}
    assert capqa["message_list"][0]["messages"][2].endswith("how many dogs")
    with pytest.raises(pixmo.BadRecordError, match="alternating"):
        pixmo.PIXMO_TASKS["pixmo_cap_qa"](_record([{"messages": ["q1"]}]), rng)

    docs = pixmo.PIXMO_TASKS["pixmo_docs_tables"](
        _record([{"image_id": "d", "questions": [{"question": "q", "answer": "a"}]}]), rng
    )
    assert docs["message_list"] == [{"question": "q", "answer": "a", "style": "pixmo_docs_tables"}]


def test_point_explanations_fill_slots_and_split_halves():
    ann = {
        "question": "Where?",
        "parsed_response": "Here <|POINT|> and",
        "alt_text": ["a"],
        "inline_text": ["b"],
        "points": [[[50.0, 25.0]]],
    }
    rec = _record(
        [ann, dict(ann, question="Q2"), dict(ann, question="Q3")], point_units="pixels", width=200, height=100
    )
    halves = set()
    for seed in range(8):
        ex = pixmo.PIXMO_TASKS["pixmo_pointing_explanations"](rec, np.random.RandomState(seed))
        halves.add(tuple(m["question"] for m in ex["message_list"]))
    assert halves == {("Where?", "Q2"), ("Q3",)}
    convs, _ = fmt.format_example(ex, for_inference=False, rng=0)
    assert '<point x="25.0" y="25.0" alt="a">b</point>' in convs[0][1]  # pixels -> percent of 200x100


def test_clock_targets():
    assert pixmo.clock_text(15, 7, 9) == "The time shown is 3:07:09"
    assert pixmo.clock_text(0, 30, -1) == "The time shown is 12:30"
    assert pixmo.clock_text(12, 5, None, "12 hour clock (with AM/PM)") == "The time shown is 12:05 PM"
    assert pixmo.clock_text(1, 0, 0, "The time is not shown") == "The time is not shown in the image."
    ex = pixmo.PIXMO_TASKS["pixmo_clocks"](_record([{"hour": 9, "minute": 41, "second": 3}]), None)
    assert ex["prompt"] == "What time is being shown?" and ex["style"] == "clocks"
    assert ex["text"] == "The time shown is 9:41:03" and ex["metadata"]["minute"] == 41
    with pytest.raises(pixmo.BadRecordError, match="record 3.*no 'hour'"):
        pixmo.PIXMO_TASKS["pixmo_clocks"](_record([{"minute": 1}]), None)
    with pytest.raises(pixmo.BadRecordError, match="time_format"):
        pixmo.PIXMO_TASKS["pixmo_clocks"](_record([{"hour": 1, "minute": 1, "time_format": "24h"}]), None)
