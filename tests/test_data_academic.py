"""Academic benchmark readers on tiny generated fixtures in each documented local layout."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from data_fixtures import jpeg_bytes, write_parquet

from molmo_jax.cli import prepare as cli
from molmo_jax.data import academic, pipeline, prepare
from molmo_jax.preprocess import MolmoProcessor
from molmo_jax.preprocess import formatting as fmt

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _img(i: int) -> dict:
    return {"bytes": jpeg_bytes(40, 30, seed=i), "path": None}


def _write_image(path, i):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(40, 30, seed=i))


def _fixtures(root):
    """One folder per dataset; returns {name: (folder, split, expected first prompt, expected target)}."""
    # ChartQA, official layout (human + augmented JSON, png folder) and HF parquet.
    chart = root / "chartqa"
    _write_image(chart / "val" / "png" / "c1.png", 1)
    (chart / "val" / "val_human.json").write_text(
        json.dumps([{"imgname": "c1.png", "query": "Max?", "label": "7"}])
    )
    (chart / "val" / "val_augmented.json").write_text(
        json.dumps([{"imgname": "c1.png", "query": "Min?", "label": "2"}])
    )
    chart_pq = root / "chartqa_hf"
    write_parquet(
        chart_pq / "data" / "test-00000.parquet",
        [{"image": _img(2), "query": "Sum?", "label": ["9"], "human_or_machine": 1}],
        pa.schema(
            [
                ("image", IMAGE),
                ("query", pa.string()),
                ("label", pa.list_(pa.string())),
                ("human_or_machine", pa.int64()),
            ]
        ),
    )
    # DocVQA official JSON.
    doc = root / "docvqa"
    _write_image(doc / "documents" / "d1.png", 3)
    (doc / "val_v1.0.json").write_text(
        json.dumps(
            {"data": [{"question": "Date?", "image": "documents/d1.png", "answers": ["1 May", "May 1"]}]}
        )
    )
    # InfographicVQA HF parquet.
    info = root / "infovqa"
    write_parquet(
        info / "validation-0.parquet",
        [{"image": _img(4), "question": "Share?", "answers": ["40%"]}],
        pa.schema([("image", IMAGE), ("question", pa.string()), ("answers", pa.list_(pa.string()))]),
    )
    # TextVQA official JSON.
    text = root / "textvqa"
    _write_image(text / "train_images" / "t1.jpg", 5)
    (text / "TextVQA_0.5.1_val.json").write_text(
        json.dumps(
            {"data": [{"question": "Brand?", "image_id": "t1", "answers": ["acme"] * 6 + ["acne"] * 4}]}
        )
    )
    # VQAv2 official questions + annotations + COCO images.
    vqa = root / "vqav2"
    _write_image(vqa / "val2014" / "COCO_val2014_000000000042.jpg", 6)
    (vqa / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(
        json.dumps({"questions": [{"question": "Color?", "image_id": 42, "question_id": 420}]})
    )
    (vqa / "v2_mscoco_val2014_annotations.json").write_text(
        json.dumps(
            {
                "annotations": [
                    {
                        "question_id": 420,
                        "answers": [{"answer": "red"}, {"answer": "red"}, {"answer": "pink"}],
                    }
                ]
            }
        )
    )
    # AI2D, CountBenchQA, RealWorldQA: HF parquet.
    ai2d = root / "ai2d"
    write_parquet(
        ai2d / "test-0.parquet",
        [{"image": _img(7), "question": "Which?", "options": ["sun", "moon"], "answer": "1"}],
        pa.schema(
            [
                ("image", IMAGE),
                ("question", pa.string()),
                ("options", pa.list_(pa.string())),
                ("answer", pa.string()),
            ]
        ),
    )
    count = root / "countbench"
    write_parquet(
        count / "train-0.parquet",
        [{"image": _img(8), "question": "How many dogs are there?", "number": 3}],
        pa.schema([("image", IMAGE), ("question", pa.string()), ("number", pa.int64())]),
    )
    rwqa = root / "realworldqa"
    q = (
        "Which lane?\nA. left\nB. right\nPlease answer directly with only the letter of the correct "
        "option and nothing else."
    )
    write_parquet(
        rwqa / "test-0.parquet",
        [{"image": _img(9), "question": q, "answer": "B"}],
        pa.schema([("image", IMAGE), ("question", pa.string()), ("answer", pa.string())]),
    )
    return {
        "chart_qa": (chart, "validation", " User: chart_qa: Max? Assistant:", " 7"),
        "doc_qa": (doc, "validation", " User: doc_qa: Date? Assistant:", None),
        "info_qa": (info, "validation", " User: info_qa: Share? Assistant:", " 40%"),
        "text_vqa": (text, "validation", " User: text_vqa: Brand? Assistant:", " acme"),
        "coco_2014_vqa": (vqa, "validation", " User: vqa2: Color? Assistant:", " red"),
        "ai2_diagram": (ai2d, "test", " User: ai2_diagram: Which?\nA: sun\nB: moon\n Assistant:", " B"),
        "countbench_qa": (count, "train", None, None),
        "real_world_qa": (rwqa, "test", " User: a_okvqa_mc: Which lane?\nA. left\nB. right Assistant:", " B"),
    }


def test_every_benchmark_reads_its_layout_with_its_style(tmp_path):
    fixtures = _fixtures(tmp_path)
    assert set(fixtures) == set(academic.ACADEMIC_READERS) == set(academic.ACADEMIC_TASKS)
    for name, (root, split, prompt, target) in fixtures.items():
        records = academic.load_academic(name, root, split)
        task = academic.ACADEMIC_TASKS[name]
        ex = task(records[0], np.random.RandomState(0))
        conv, _ = fmt.format_example(ex, for_inference=True, rng=0)
        if prompt is not None:
            assert conv == [prompt], name
        if target is not None:
            train, _ = fmt.format_example(ex, for_inference=False, rng=0)
            assert train[1] == target, name
    chart = academic.load_academic("chart_qa", tmp_path / "chartqa", "validation")
    assert [r["annotations"][0]["human"] for r in chart] == [True, False]
    hf = academic.load_academic("chart_qa", tmp_path / "chartqa_hf", "test")
    assert hf[0]["annotations"][0] == {"question": "Sum?", "answers": ["9"], "human": False}
    doc = academic.load_academic("doc_qa", tmp_path / "docvqa", "validation")[0]
    assert doc["annotations"][0]["answers"] == ["1 May", "May 1"]
    assert doc["image_path"] == str(tmp_path / "docvqa" / "documents" / "d1.png")
    cb = academic.ACADEMIC_TASKS["countbench_qa"](
        academic.load_academic("countbench_qa", tmp_path / "countbench", "train")[0], None
    )
    assert cb["style"] == "point_count" and cb["metadata"]["count"] == 3


def test_reader_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown academic dataset 'mmmu'"):
        academic.load_academic("mmmu", tmp_path)
    with pytest.raises(FileNotFoundError, match="no folder"):
        academic.load_academic("ai2_diagram", tmp_path / "nope")
    (tmp_path / "ai2d").mkdir()
    write_parquet(
        tmp_path / "ai2d" / "test-0.parquet",
        [{"image": _img(1), "question": "q"}],
        pa.schema([("image", IMAGE), ("question", pa.string())]),
    )
    with pytest.raises(ValueError, match="none of the columns \\('options', 'choices'\\)"):
        academic.load_academic("ai2_diagram", tmp_path / "ai2d", "test")
    with pytest.raises(FileNotFoundError, match="no validation parquet"):
        academic.load_academic("ai2_diagram", tmp_path / "ai2d", "validation")


def test_academic_records_through_the_pipeline_and_prepare(tmp_path, capsys):
    fixtures = _fixtures(tmp_path / "raw")
    processor = MolmoProcessor.from_pretrained("molmo_7b_d", max_crops=2)
    records = academic.load_academic("text_vqa", fixtures["text_vqa"][0], "validation")
    cfg = pipeline.PipelineConfig(
        batch_size=1, sequence_length=400, num_epochs=1, process_index=0, process_count=1, for_inference=True
    )
    batch = next(iter(pipeline.build_pipeline("text_vqa", processor, cfg, sources={"text_vqa": records})))
    text = processor.tokenizer.decode(batch["input_ids"][0][batch["input_ids"][0] >= 0])
    assert text.endswith("User: text_vqa: Brand? Assistant:")

    rc = cli.main(
        [
            "academic",
            "--dataset",
            "chart_qa",
            "--root",
            str(fixtures["chart_qa"][0]),
            "--out",
            str(tmp_path / "out"),
            "--splits",
            "validation",
            "--quiet",
        ]
    )
    assert rc == 0 and "chart_qa: 2 examples (validation 2)" in capsys.readouterr().out
    src = prepare.open_prepared(tmp_path / "out", "chart_qa", "validation")
    assert src[1]["annotations"][0]["question"] == "Min?" and src[1]["width"] == 40
