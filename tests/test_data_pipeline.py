"""Grain pipelines: static shapes, exact resume (with and without worker processes), per-process shards,
mixture rates, truncation accounting and bad records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_fixtures import jpeg_bytes

from molmo_jax.data import pipeline, prepare
from molmo_jax.data.pixmo import BadRecordError
from molmo_jax.preprocess import MolmoProcessor

N_CAP = 10


def _cap_record(i: int, size=(48, 32), image: bytes | None = None, annotation: dict | None = None) -> dict:
    return {
        "image": image if image is not None else jpeg_bytes(*size, seed=i),
        "image_url": f"u{i}",
        "width": size[0],
        "height": size[1],
        "annotations": [
            annotation
            if annotation is not None
            else {"caption": f"caption number {i} " + "word " * (i % 3), "transcripts": []}
        ],
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    prepare.write_prepared(
        root, "pixmo_cap", {"train": [_cap_record(i) for i in range(N_CAP)]}, metadata={"kind": "pixmo_cap"}
    )
    points = [
        {
            "image": jpeg_bytes(64, 48, seed=50 + i),
            "image_url": f"p{i}",
            "width": 64,
            "height": 48,
            "annotations": [
                {"points": [[10.0 + i, 20.0]], "count": 1, "label": "cat"},
                {"points": [], "count": 0, "label": "dog"},
            ],
        }
        for i in range(6)
    ]
    prepare.write_prepared(
        root, "pixmo_points", {"train": points}, metadata={"kind": "pixmo_points", "point_units": "pixels"}
    )
    big = [_cap_record(i, size=(640, 480)) for i in range(3)]
    prepare.write_prepared(root, "my_captions", {"train": big}, metadata={"kind": "pixmo_cap"})
    return root


@pytest.fixture(scope="module")
def small_processor():
    return MolmoProcessor.from_pretrained("molmo_7b_d", max_crops=2)


def _config(**kw) -> pipeline.PipelineConfig:
    return pipeline.PipelineConfig(
        **{"batch_size": 2, "sequence_length": 256, "seed": 3, "process_index": 0, "process_count": 1, **kw}
    )


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_batches_have_the_model_shapes_molmo_7b_d(data_dir):
    processor = MolmoProcessor.from_pretrained("molmo_7b_d")  # max_crops 12: 640x480 -> 7 crops of 13
    ds = pipeline.build_pipeline("my_captions", processor, _config(sequence_length=1024), data_dir=data_dir)
    it = iter(ds)
    batch = next(it)
    expected = {
        "input_ids": ((2, 1024), np.int64),
        "target_tokens": ((2, 1024), np.int64),
        "position_ids": ((2, 1024), np.int64),
        "subsegment_ids": ((2, 1024), np.int64),
        "loss_masks": ((2, 1024), np.float32),
        "images": ((2, 13, 576, 588), np.float32),
        "image_masks": ((2, 13, 576), np.float32),
        "image_input_idx": ((2, 13, 144), np.int32),
    }
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    for b in range(2):
        n = int((batch["input_ids"][b] >= 0).sum())
        assert 740 < n < 1024 and (batch["input_ids"][b, n:] == -1).all()
        assert (batch["images"][b, 7:] == -1).all() and not (batch["images"][b, :7] == -1).all()
        idx = batch["image_input_idx"][b]
        assert (batch["input_ids"][b, idx[idx >= 0]] == processor.tokenizer.image_patch_id).all()
        assert (idx >= 0).sum() == 704  # 7 crops, 144 features each minus the overlap margins
        assert (
            batch["loss_masks"][b].max() == 1
            and batch["loss_masks"][b, :n][
                batch["input_ids"][b, :n] == processor.tokenizer.image_patch_id
            ].max()
            == 0
        )
    assert it.stats.examples == 2 and it.stats.truncated_examples == 0


def test_exact_resume_without_workers(data_dir, small_processor):
    ds = pipeline.build_pipeline(["pixmo_cap", "pixmo_points"], small_processor, _config(), data_dir=data_dir)
    it = iter(ds)
    _take(it, 7)  # past an epoch of pixmo_points: reshuffled epochs resume too
    state = it.get_state()
    json.dumps(state)  # what the Orbax Grain handler writes
    expected = _take(it, 5)
    resumed = iter(ds)
    resumed.set_state(state)
    assert _same(_take(resumed, 5), expected)
    assert resumed.stats.batches == it.stats.batches == 12
    fresh = iter(ds)
    assert not _same(_take(fresh, 5), expected)  # the state matters: the test can fail


def test_exact_resume_with_worker_processes(data_dir, small_processor):
    ds = pipeline.build_pipeline(
        ["pixmo_cap", "pixmo_points"], small_processor, _config(num_workers=2), data_dir=data_dir
    )
    it = iter(ds)
    try:
        _take(it, 4)
        state = it.get_state()
        json.dumps(state)
        expected = _take(it, 4)
    finally:
        it.close()
    resumed = iter(ds)
    try:
        resumed.set_state(state)
        got = _take(resumed, 4)
    finally:
        resumed.close()
    assert _same(got, expected)
    assert sum(int((b["input_ids"] >= 0).any(axis=1).sum()) for b in got) == 8


def _example_keys(ds) -> list[tuple]:
    return [(tuple(ex["input_ids"]), float(ex["images"].sum())) for ex in ds]


def test_process_shards_are_disjoint_and_cover_the_stream(data_dir, small_processor):
    cfg = dict(num_epochs=1, shuffle=True)
    whole = _example_keys(
        pipeline.build_map_dataset("pixmo_cap", small_processor, _config(**cfg), data_dir=data_dir)
    )
    assert len(whole) == N_CAP and len(set(whole)) == N_CAP
    shards = [
        _example_keys(
            pipeline.build_map_dataset(
                "pixmo_cap",
                small_processor,
                _config(process_index=i, process_count=3, **cfg),
                data_dir=data_dir,
            )
        )
        for i in range(3)
    ]
    assert [len(s) for s in shards] == [4, 3, 3]
    assert sorted(k for s in shards for k in s) == sorted(whole)
    for i, shard in enumerate(shards):  # example j of the global stream is the same whatever the shard count
        assert shard == whole[i::3]
    with pytest.raises(ValueError, match="process_index 3 not in"):
        pipeline.build_map_dataset(
            "pixmo_cap", small_processor, _config(process_index=3, process_count=3), data_dir=data_dir
        )


def test_mixture_rates_from_sizes():
    sizes = {
        "pixmo_cap": 100,
        "pixmo_ask_model_anything": 400,
        "chart_qa": 50,
        "pixmo_points": 900,
        "pixmo_count": 100,
    }
    rates = pipeline.mixture_rates(sizes)
    expected = {
        "pixmo_cap": 0.05,
        "pixmo_ask_model_anything": 0.10,
        "chart_qa": 0.50,
        "pixmo_points": 0.2625,
        "pixmo_count": 0.0875,
    }
    assert rates == pytest.approx(expected)
    # PixMo-Cap's size is capped at 50,000 as in the original.
    big = pipeline.mixture_rates({"pixmo_cap": 10**6, "pixmo_cap_qa": 50_000})
    assert big == pytest.approx({"pixmo_cap": 0.5, "pixmo_cap_qa": 0.5})
    # Groups without any task drop out; the rest is renormalised.
    only = pipeline.mixture_rates({"pixmo_points": 400, "pixmo_count": 100})
    assert only == pytest.approx({"pixmo_points": 2 / 3, "pixmo_count": 1 / 3})
    with pytest.raises(ValueError, match="task 'mystery' is in no mixture group"):
        pipeline.mixture_rates({"mystery": 3})
    with pytest.raises(ValueError, match="has size 0"):
        pipeline.mixture_rates({"pixmo_count": 0})


def test_mixture_sizes_and_unknown_names(data_dir, small_processor):
    assert pipeline.task_sizes(["pixmo_cap", "pixmo_points_counting"], data_dir) == {
        "pixmo_cap": N_CAP,
        "pixmo_points_counting": 6,
    }
    with pytest.raises(ValueError, match="unknown dataset 'pixmo_kittens'"):
        pipeline.build_pipeline(["pixmo_cap", "pixmo_kittens"], small_processor, _config(), data_dir=data_dir)
    with pytest.raises(prepare.PreparedDataError, match="no prepared dataset 'pixmo_count'"):
        pipeline.build_pipeline(["pixmo_cap", "pixmo_count"], small_processor, _config(), data_dir=data_dir)
    with pytest.raises(ValueError, match="mixture repeats"):
        pipeline.build_pipeline(
            ["pixmo_cap", "pixmo_points"], small_processor, _config(num_epochs=1), data_dir=data_dir
        )
    # Weighted mixtures follow their weights (Grain's deterministic weighted interleave).
    mixed = pipeline.build_map_dataset(
        {"pixmo_cap": 0.75, "pixmo_points": 0.25}, small_processor, _config(), data_dir=data_dir
    )
    n_points = sum(int("subsegment_ids" in mixed[i]) for i in range(40))
    assert n_points == 10  # pixmo_points examples pack two conversations; captions one


def test_truncation_is_counted_and_keeps_features_in_range(data_dir, small_processor):
    it = iter(
        pipeline.build_pipeline("pixmo_cap", small_processor, _config(sequence_length=100), data_dir=data_dir)
    )
    batch = next(it)
    assert batch["input_ids"].shape == (2, 100) and (batch["input_ids"] >= 0).all()
    idx = batch["image_input_idx"]
    assert idx.max() < 100 and (idx >= 0).sum() > 0
    assert it.stats.truncated_examples == 2 and it.stats.truncated_tokens > 2 * 100
    crops = iter(
        pipeline.build_pipeline("pixmo_cap", small_processor, _config(max_crops=1), data_dir=data_dir)
    )
    b = next(crops)
    assert b["images"].shape[1] == 1 and crops.stats.cropped_examples == 2 and crops.stats.dropped_crops >= 2


def test_multi_annotation_sampling(data_dir, small_processor):
    ds = pipeline.build_map_dataset(
        "pixmo_points", small_processor, _config(max_conversations=1), data_dir=data_dir
    )
    assert all("subsegment_ids" not in ds[i] for i in range(6))
    packed = pipeline.build_map_dataset("pixmo_points", small_processor, _config(), data_dir=data_dir)
    assert all(set(np.unique(packed[i]["subsegment_ids"])) == {1, 2, 10000} for i in range(6))


def test_last_batch_is_padded_with_counted_padding_examples(data_dir, small_processor):
    cfg = _config(batch_size=4, num_epochs=1, drop_remainder=False)
    it = iter(pipeline.build_pipeline("pixmo_cap", small_processor, cfg, data_dir=data_dir))
    batches = list(it)
    assert len(batches) == 3 and all(b["input_ids"].shape == (4, 256) for b in batches)
    assert (batches[-1]["input_ids"][2:] == -1).all() and (batches[-1]["images"][2:] == -1).all()
    assert it.stats.examples == N_CAP and it.stats.padding_examples == 2


def test_bad_records_raise_or_are_skipped_and_counted(tmp_path, small_processor):
    recs = [_cap_record(i) for i in range(6)]
    recs[2] = _cap_record(2, image=jpeg_bytes(48, 32, seed=2)[:200])  # corrupt bytes in a prepared record
    recs[4] = _cap_record(4, annotation={"transcripts": []})  # no caption
    prepare.write_prepared(tmp_path, "pixmo_cap", {"train": recs}, metadata={"kind": "pixmo_cap"})
    cfg = _config(batch_size=1, num_epochs=1, shuffle=False)
    with pytest.raises(BadRecordError, match="pixmo_cap record 2 .*not a readable image"):
        list(pipeline.build_pipeline("pixmo_cap", small_processor, cfg, data_dir=tmp_path))
    recs[2] = _cap_record(2)
    prepare.write_prepared(
        tmp_path, "pixmo_cap", {"train": recs}, metadata={"kind": "pixmo_cap"}, overwrite=True
    )
    with pytest.raises(BadRecordError, match="pixmo_cap record 4 .*no 'caption'"):
        list(pipeline.build_pipeline("pixmo_cap", small_processor, cfg, data_dir=tmp_path))
    recs[1] = _cap_record(1, image=b"junk")
    prepare.write_prepared(
        tmp_path, "pixmo_cap", {"train": recs}, metadata={"kind": "pixmo_cap"}, overwrite=True
    )
    it = iter(
        pipeline.build_pipeline(
            "pixmo_cap",
            small_processor,
            _config(batch_size=2, num_epochs=1, shuffle=False, on_bad_record="skip"),
            data_dir=tmp_path,
        )
    )
    batches = list(it)
    assert len(batches) == 2 and it.stats.skipped_records == 2 and it.stats.examples == 4
    assert all((b["input_ids"] >= 0).any(axis=1).all() for b in batches)
