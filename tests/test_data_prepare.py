"""Preparation end to end: parquet + file:// images -> verified, grouped ArrayRecord shards; the reader;
bad input; the prepare CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_fixtures import cap_dataset, jpeg_bytes, points_dataset, sha, write_parquet

from molmo_jax.cli import prepare as cli
from molmo_jax.data import prepare
from molmo_jax.data.download import read_manifest
from molmo_jax.data.jsonl import JsonlError, read_jsonl
from molmo_jax.data.pixmo import SchemaError

QUIET = dict(progress=False, download_kwargs={"workers": 4})


def _records(data_dir, name, split):
    src = prepare.open_prepared(data_dir, name, split)
    return [src[i] for i in range(len(src))]


def test_prepare_points_end_to_end(tmp_path):
    parquet, urls = points_dataset(tmp_path / "raw", n_images=24, bad=(4,), missing=(6,), wrong_hash=(8,))
    out = tmp_path / "prepared"
    reports = prepare.prepare_pixmo("pixmo_points", parquet, out, num_val=2, **QUIET)
    basic, high = {r.dataset: r for r in reports}.values()
    assert (basic.dataset, high.dataset) == ("pixmo_points", "pixmo_points_high_freq")

    # Manifest: one line per URL with the downloader's statuses; the truncated JPEG with a matching hash
    # downloads "ok" (sha256-checked datasets are not decoded by the downloader) and is caught here.
    manifest = read_manifest(out / "pixmo_images" / "manifests" / "pixmo_points.jsonl")
    assert manifest[urls[6]]["status"] == "not_found" and manifest[urls[8]]["status"] == "hash_mismatch"
    assert manifest[urls[4]]["status"] == "ok" and manifest[urls[0]]["status"] == "ok"
    assert basic.download.total == 24 and basic.download.ok == 22
    assert basic.rows_dropped == {"image_not_found": 2, "image_hash_mismatch": 2}  # 2 labels per image
    assert basic.images_skipped == {"bad_image": 1}
    assert high.rows_dropped == {} and high.images_skipped == {}

    # Even images are "pointing": 12 - missing 6 - hash 8 - bad 4 = 9 images; odd ones all 12.
    assert basic.splits == {"train": 7, "validation": 2} and high.splits == {"train": 10, "validation": 2}
    assert basic.point_units == "pixels"
    train = _records(out, "pixmo_points", "train") + _records(out, "pixmo_points", "validation")
    urls_written = {r["image_url"] for r in train}
    assert urls_written == {urls[i] for i in range(0, 24, 2)} - {urls[4], urls[6], urls[8]}
    for rec in train:  # one record per image with all its rows, encoded bytes as they were
        i = urls.index(rec["image_url"])
        assert [a["label"] for a in rec["annotations"]] == ["cat", "dog"]
        assert rec["image"] == jpeg_bytes(160, 120, seed=i) and rec["image_sha256"] == sha(rec["image"])
        assert (rec["width"], rec["height"]) == (160, 120) and rec["point_units"] == "pixels"
        assert len(rec["annotations"][0]["points"]) == i % 4
    info = prepare.prepared_info(out, "pixmo_points")
    assert info["kind"] == "pixmo_points" and info["report"]["images_skipped"] == {"bad_image": 1}
    assert prepare.prepared_size(out, "pixmo_points", "validation") == 2

    # The same input gives the same files; a re-run reuses every download.
    again = prepare.prepare_pixmo(
        "pixmo_points", parquet, tmp_path / "again", image_cache=out / "pixmo_images", num_val=2, **QUIET
    )
    assert again[0].download.reused == 24 and again[0].download.fetched == 0
    assert [r["image_url"] for r in _records(tmp_path / "again", "pixmo_points", "validation")] == [
        r["image_url"] for r in _records(out, "pixmo_points", "validation")
    ]
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare.prepare_pixmo("pixmo_points", parquet, out, num_val=2, **QUIET)


def test_validation_split_is_the_originals_and_fixed(tmp_path):
    train, val = prepare.validation_split(10, 3)
    perm = np.random.default_rng(96817).permutation(10)  # HF train_test_split(test_size=3, seed=96817)
    assert list(val) == list(perm[:3]) and list(train) == list(perm[3:])
    recs = [{"i": i} for i in range(100)]
    a = prepare.split_records(recs, 7)
    b = prepare.split_records(list(recs), 7)
    assert a == b and len(a["validation"]) == 7 and len(a["train"]) == 93
    assert {r["i"] for r in a["validation"]}.isdisjoint({r["i"] for r in a["train"]})
    notes = []
    small = prepare.split_records(recs[:30], 2048, notes=notes)
    assert len(small["validation"]) == 7 and "lowered from 2048 to 7" in notes[0]


def test_bad_images_can_stop_preparation(tmp_path):
    parquet, urls = points_dataset(tmp_path / "raw", n_images=6, bad=(2,))
    with pytest.raises(prepare.BadImageError, match="img%202.jpg: not a decodable image"):
        prepare.prepare_pixmo("pixmo_points", parquet, tmp_path / "out", on_bad_image="raise", **QUIET)


def test_empty_dataset_and_holdout(tmp_path):
    parquet, urls = points_dataset(tmp_path / "raw", n_images=4, missing=(0, 1, 2, 3))
    with pytest.raises(prepare.EmptyDatasetError, match="pixmo_points: no example left.*image_not_found"):
        prepare.prepare_pixmo("pixmo_points", parquet, tmp_path / "out", **QUIET)
    parquet2, urls2 = points_dataset(tmp_path / "raw2", n_images=6)
    reports = prepare.prepare_pixmo(
        "pixmo_points", parquet2, tmp_path / "out2", holdout_urls=[urls2[0], urls2[1]], num_val=0, **QUIET
    )
    assert reports[0].rows_dropped == {"held_out": 2} and reports[0].splits == {"train": 2}
    assert reports[1].rows_dropped == {"held_out": 2} and reports[1].splits == {"train": 2}
    import pyarrow as pa
    from data_fixtures import POINTS_SCHEMA

    no_rows = write_parquet(tmp_path / "none" / "train.parquet", [], POINTS_SCHEMA)
    with pytest.raises(prepare.EmptyDatasetError, match="have no rows"):
        prepare.prepare_pixmo("pixmo_points", no_rows.parent, tmp_path / "out3", **QUIET)
    del pa


def test_caption_dataset_without_hashes_is_verified_by_decoding(tmp_path):
    parquet = cap_dataset(tmp_path / "raw", n_images=5)
    (tmp_path / "raw" / "images" / "3.png").write_bytes(b"\x89PNG broken")
    (report,) = prepare.prepare_pixmo("pixmo_cap", parquet, tmp_path / "out", num_val=0, **QUIET)
    assert report.rows_dropped == {"image_not_an_image": 1} and report.splits == {"train": 4}
    rec = prepare.open_prepared(tmp_path / "out", "pixmo_cap")[0]
    assert rec["annotations"] == [
        {"caption": "A picture number 0 with noise.", "transcripts": ["transcript 0 a", "transcript 0 b"]}
    ]


def test_preparing_leaves_nothing_in_the_system_temp_dir(tmp_path, monkeypatch):
    import tempfile

    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    recs = [{"image": jpeg_bytes(16, 16, i), "image_url": f"u{i}", "annotations": []} for i in range(2)]
    prepare.write_prepared(tmp_path / "out", "leftovers", {"train": recs})
    assert len(prepare.open_prepared(tmp_path / "out", "leftovers")) == 2
    assert list(system_tmp.iterdir()) == []


def test_deleted_or_truncated_shards_are_named(tmp_path):
    recs = [
        {
            "image": jpeg_bytes(32, 24, i),
            "image_url": f"u{i}",
            "width": 32,
            "height": 24,
            "annotations": [{"caption": str(i)}],
        }
        for i in range(6)
    ]
    path = prepare.write_prepared(
        tmp_path, "pixmo_cap", {"train": recs}, metadata={"kind": "pixmo_cap"}, num_shards=2
    )
    shards = sorted(path.glob("pixmo_cap-train.array_record-*"))
    assert len(shards) == 2
    src = prepare.open_prepared(tmp_path, "pixmo_cap")
    assert [src[i]["annotations"][0]["caption"] for i in range(6)] == [str(i) for i in range(6)]
    with pytest.raises(IndexError):
        src[6]
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(prepare.PreparedDataError, match=f"shard {shards[1]} has .* bytes.*truncated"):
        prepare.open_prepared(tmp_path, "pixmo_cap")
    shards[1].write_bytes(data)
    src = prepare.open_prepared(tmp_path, "pixmo_cap")
    shards[0].unlink()
    with pytest.raises(prepare.PreparedDataError, match=f"shard missing: {shards[0]}"):
        prepare.open_prepared(tmp_path, "pixmo_cap")
    with pytest.raises(prepare.PreparedDataError, match=f"{shards[0]}: cannot read record 0"):
        src[0]  # opened before the shard went away
    with pytest.raises(prepare.PreparedDataError, match="no prepared dataset 'pixmo_count'"):
        prepare.open_prepared(tmp_path, "pixmo_count")
    with pytest.raises(prepare.PreparedDataError, match="no split 'validation'"):
        prepare.open_prepared(tmp_path, "pixmo_cap", "validation")
    with pytest.raises(prepare.EmptyDatasetError):
        prepare.write_prepared(tmp_path, "empty", {"train": []})


def test_jsonl_reader_schema_errors(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(40, 30, 0))
    lines = [
        {"image": "a.jpg", "messages": ["What?", "A."]},
        {"image": str(tmp_path / "a.jpg"), "conversations": [["Q1", "A1"], ["Q2", "A2"]], "style": "user_qa"},
        {
            "image": (tmp_path / "a.jpg").as_uri(),
            "label": "dot",
            "points": [[50, 50]],
            "point_units": "percent",
        },
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    recs = read_jsonl(path)
    assert [r["image_path"] for r in recs] == [str(tmp_path / "a.jpg")] * 3
    bad = {"image": "a.jpg", "messages": ["only a question"]}
    for row, match in (
        (bad, "data2.jsonl:2: a conversation"),
        ({"messages": ["q", "a"]}, "data2.jsonl:2: needs an"),
        ({"image": "a.jpg"}, "exactly one of"),
        ({"image": "a.jpg", "points": [[1, 2]]}, "needs a 'label'"),
    ):
        (tmp_path / "data2.jsonl").write_text(json.dumps(lines[0]) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(JsonlError, match=match):
            read_jsonl(tmp_path / "data2.jsonl")
    (tmp_path / "data3.jsonl").write_text("{not json\n")
    with pytest.raises(JsonlError, match="data3.jsonl:1: not JSON"):
        read_jsonl(tmp_path / "data3.jsonl")


def test_cli_pixmo_jsonl_and_errors(tmp_path, capsys):
    parquet, urls = points_dataset(tmp_path / "raw", n_images=8, missing=(2,))
    rc = cli.main(
        [
            "pixmo",
            "--dataset",
            "pixmo_points",
            "--parquet",
            str(parquet),
            "--out",
            str(tmp_path / "out"),
            "--image_cache",
            str(tmp_path / "cache"),
            "--num_val",
            "1",
            "--quiet",
            "--workers",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "8 images: 7 ok (87.5%)" in out and "not_found" in out  # the downloader's coverage summary
    assert "pixmo_points: 3 examples (train 2, validation 1)" in out
    assert "pixmo_points_high_freq: 4 examples (train 3, validation 1)" in out
    assert (
        read_manifest(tmp_path / "cache" / "manifests" / "pixmo_points.jsonl")[urls[2]]["status"]
        == "not_found"
    )

    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(40, 30, 0))
    (tmp_path / "mine.jsonl").write_text(json.dumps({"image": "a.jpg", "messages": ["Q", "A"]}) + "\n")
    assert (
        cli.main(
            ["jsonl", "--input", str(tmp_path / "mine.jsonl"), "--out", str(tmp_path / "out"), "--quiet"]
        )
        == 0
    )
    assert "mine: 1 examples (train 1)" in capsys.readouterr().out
    assert prepare.prepared_info(tmp_path / "out", "mine")["kind"] == "jsonl"

    bad = write_parquet(tmp_path / "bad" / "train.parquet", [{"image_url": "u", "caption": "c"}])
    assert (
        cli.main(
            [
                "pixmo",
                "--dataset",
                "pixmo_cap",
                "--parquet",
                str(bad.parent),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "error:" in err and "train.parquet: missing column 'transcripts'" in err
    with pytest.raises(SchemaError):
        prepare.prepare_pixmo("pixmo_cap", bad.parent, tmp_path / "o", **QUIET)


def test_cli_synthetic_writes_and_prepares(tmp_path, capsys):
    rc = cli.main(
        [
            "synthetic",
            "--out",
            str(tmp_path / "raw"),
            "--num_images",
            "8",
            "--seed",
            "1",
            "--prepare_to",
            str(tmp_path / "prepared"),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    for name in (
        "pixmo_cap",
        "pixmo_points",
        "pixmo_points_high_freq",
        "pixmo_count",
        "pixmo_clocks",
        "pixmo_ask_model_anything",
    ):
        info = prepare.prepared_info(tmp_path / "prepared", name)
        assert sum(s["num_examples"] for s in info["splits"].values()) > 0, name
    assert prepare.prepared_info(tmp_path / "prepared", "pixmo_count")["point_units"] == "pixels"
    assert "16 images: 16 ok (100.0%)" in out  # 8 scenes + 8 clocks for PixMo-Cap


def test_docs_with_embedded_images_keep_published_splits(tmp_path):
    import pyarrow as pa

    qa = pa.struct([("question", pa.list_(pa.string())), ("answer", pa.list_(pa.string()))])
    schema = pa.schema(
        [
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("image_id", pa.string()),
            ("questions", qa),
        ]
    )

    def row(i, data):
        return {
            "image": {"bytes": data, "path": None},
            "image_id": f"doc{i}",
            "questions": {"question": [f"q{i}"], "answer": [f"a{i}"]},
        }

    rows = [row(i, jpeg_bytes(30, 20, i)) for i in range(5)] + [row(5, b"\xff\xd8 broken")]
    write_parquet(tmp_path / "charts" / "train-00000-of-00001.parquet", rows, schema)
    write_parquet(
        tmp_path / "charts" / "validation-00000-of-00001.parquet", [row(9, jpeg_bytes(30, 20, 9))], schema
    )
    (report,) = prepare.prepare_pixmo("pixmo_docs_charts", tmp_path / "charts", tmp_path / "out", **QUIET)
    assert report.splits == {"train": 5, "validation": 1} and report.images_skipped == {"bad_image": 1}
    rec = prepare.open_prepared(tmp_path / "out", "pixmo_docs_charts", "validation")[0]
    assert rec["image"] == jpeg_bytes(30, 20, 9)
    assert rec["annotations"] == [{"image_id": "doc9", "questions": [{"question": "q9", "answer": "a9"}]}]
