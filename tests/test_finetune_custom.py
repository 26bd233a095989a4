"""configs/finetune_custom.py end to end: a synthetic pointing JSONL, `prepare jsonl`, then LoRA and
full fine-tuning of the golden tiny checkpoint; adapter export, merge, resume and config errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import REPO_ROOT, golden_tiny_checkpoint, load_config

from molmo_jax.model.config import ConfigError
from molmo_jax.train.config import validate


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data_dir, checkpoint): 8 shape scenes as a pointing JSONL (pixel and percent points,
    relative and absolute image paths), prepared as `my_dataset`; the golden tiny checkpoint."""
    from molmo_jax.cli.prepare import main as prepare_main
    from molmo_jax.data.synthetic import render_shapes

    root = tmp_path_factory.mktemp("finetune_custom")
    (root / "imgs").mkdir()
    lines = []
    for i in range(8):
        image, scene = render_shapes(np.random.default_rng(i), size=112)
        image.save(root / "imgs" / f"{i}.png")
        pts = [[o.x, o.y] for o in scene.matching(scene.target)]
        row = {"image": f"imgs/{i}.png", "label": scene.target.label, "points": pts}
        if i % 2:
            row["image"] = str(root / "imgs" / f"{i}.png")
            row["points"] = [[100 * x / 112, 100 * y / 112] for x, y in pts]
            row["point_units"] = "percent"
        lines.append(json.dumps(row))
    (root / "points.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["jsonl", "--input", str(root / "points.jsonl"), "--out", str(root / "data")]
    assert prepare_main([*argv, "--name", "my_dataset", "--num_val", "0", "--quiet"]) == 0
    assert prepare_main([*argv, "--name", "my_other", "--num_val", "0", "--quiet"]) == 0
    ckpt = root / "ckpt"
    ckpt.mkdir()
    golden_tiny_checkpoint(ckpt)
    return root / "data", ckpt


def _config(data: Path, ckpt: Path, arg: str = "tiny,lora", steps: int = 12):
    c = load_config("finetune_custom", arg)
    c.model.checkpoint = str(ckpt)
    c.data.data_dir = str(data)
    c.train.steps = steps
    c.train.log_every = 1
    c.train.checkpoint_every = 4
    c.mesh.data = 2  # 2 of the 8 simulated devices
    return c


def _batch_logits(graphdef, params, batch):
    model = nnx.merge(graphdef, params)
    keys = ("images", "image_masks", "image_input_idx", "position_ids")
    return model(jnp.asarray(batch["input_ids"]), **{k: jnp.asarray(batch[k]) for k in keys}).logits


@pytest.mark.slow  # an end-to-end fine-tune, export and merge (~25 s)
def test_lora_finetune_lowers_loss_exports_and_merges(prepared, tmp_path):
    from molmo_jax.checkpoints.hf import load_pretrained
    from molmo_jax.data.pipeline import PipelineConfig, build_pipeline
    from molmo_jax.train import lora
    from molmo_jax.train.loop import build_processor, train

    data, ckpt = prepared
    c = _config(data, ckpt)
    c.lora.export_merged = True
    summary = train(c, tmp_path / "run")
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert "grad_norm/lora" in summary["history"][0] and "lr/lora" in summary["history"][0]

    # only adapters are trained: the merged export differs from the base only in targeted weights
    base = load_pretrained(ckpt)
    graphdef, base_params = nnx.split(base, nnx.Param)
    adapters, cfg = lora.load_adapters(summary["adapters"], base_params)
    assert set(adapters) == set(lora.select_targets(base_params, cfg)) and cfg.rank == 8
    assert all(name.startswith("llm.blocks.") for name in adapters)
    assert all(np.any(np.asarray(ab["b"])) for ab in adapters.values())
    merged = load_pretrained(summary["hf_checkpoint"])
    _, merged_params = nnx.split(merged, nnx.Param)
    flat_base = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(base_params)}
    changed = {
        ".".join(map(str, p))
        for p, v in nnx.to_flat_state(merged_params)
        if not np.array_equal(np.asarray(v.get_value()), np.asarray(flat_base[".".join(map(str, p))]))
    }
    assert changed and changed <= set(adapters)

    # the merged checkpoint computes what base + adapters compute
    proc_cfg = _config(data, ckpt)
    pipe = build_pipeline(
        ["my_dataset"],
        build_processor(proc_cfg),
        PipelineConfig(batch_size=2, sequence_length=512, max_crops=2, seed=0, num_workers=0),
        data_dir=str(data),
    )
    batch = next(iter(pipe))
    adapted = _batch_logits(graphdef, lora.apply_adapters(base_params, adapters, cfg), batch)
    out = _batch_logits(*nnx.split(merged, nnx.Param), batch)
    np.testing.assert_allclose(np.asarray(out), np.asarray(adapted), rtol=0, atol=1e-4)
    assert (Path(summary["hf_checkpoint"]) / "tokenizer.json").exists()


@pytest.mark.slow
def test_lora_resume_continues_exactly(prepared, tmp_path):
    from molmo_jax.train.loop import train

    data, ckpt = prepared
    full = train(_config(data, ckpt, steps=6), tmp_path / "full")
    first = train(_config(data, ckpt, steps=6), tmp_path / "resumed", stop_after=4)
    assert first["end_step"] == 4 and "adapters" not in first
    second = train(_config(data, ckpt, steps=6), tmp_path / "resumed")
    assert second["start_step"] == 4
    expected = [h["loss"] for h in full["history"] if h["step"] > 4]
    assert [h["loss"] for h in second["history"]] == expected
    assert (tmp_path / "resumed" / "adapters" / "adapter_model.safetensors").exists()


@pytest.mark.slow  # full fine-tuning itself is covered by the trainer tests; this checks the config
def test_full_finetune_same_config_runs(prepared, tmp_path):
    from molmo_jax.train.loop import train

    data, ckpt = prepared
    c = _config(data, ckpt, arg="tiny", steps=2)
    c.mesh.data = 1
    assert not c.lora.enabled
    summary = train(c, tmp_path / "full")
    assert len(summary["history"]) == 2 and all(np.isfinite(h["loss"]) for h in summary["history"])
    assert "lr/llm" in summary["history"][0] and "lr/lora" not in summary["history"][0]
    assert (Path(summary["hf_checkpoint"]) / "model.safetensors").exists() and "adapters" not in summary


@pytest.mark.slow
def test_own_datasets_mix_with_explicit_weights(prepared, tmp_path):
    from molmo_jax.train.loop import train

    data, ckpt = prepared
    c = _config(data, ckpt, arg="tiny", steps=2)
    c.mesh.data = 1
    c.data.tasks = ("my_dataset", "my_other")  # neither is in a recipe mixture group
    with pytest.raises(ValueError, match="task 'my_dataset' is in no mixture group.*data.task_weights"):
        train(c, tmp_path / "unweighted")
    c.data.task_weights = {"my_dataset": 3, "my_other": 1}
    summary = train(c, tmp_path / "weighted")
    assert [h["step"] for h in summary["history"]] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in summary["history"])


def test_config_variants_and_lora_errors():
    assert not load_config("finetune_custom", "molmo_7b_d").lora.enabled
    c = load_config("finetune_custom", "molmo_7b_d,lora")
    assert c.lora.enabled and c.lora.base_dtype == "bfloat16" and c.model.preset == "molmo_7b_d"
    c.model.checkpoint = "some/checkpoint"
    validate(c)
    with pytest.raises(ValueError, match="unknown option"):
        load_config("finetune_custom", "molmo_7b_d,qlora")
    for key, value, message in [
        ("rank", 0, "config.lora.rank=0"),
        ("dropout", 1.5, "config.lora.dropout=1.5"),
        ("base_dtype", "int8", "config.lora.base_dtype='int8'"),
        ("targets", (), "config.lora.targets=()"),
        ("targets", ("llm.(",), "config.lora.targets: 'llm.(' is not a valid regex"),
    ]:
        bad = load_config("finetune_custom", "molmo_7b_d,lora")
        bad.model.checkpoint = "some/checkpoint"
        bad.lora[key] = value
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate(bad)


@pytest.mark.slow
def test_lora_dry_run_memory_is_smaller():
    from molmo_jax.train.loop import dry_run_memory

    full = load_config("finetune_custom", "tiny")
    full.mesh.data, full.mesh.fsdp = 2, 4
    full.data.batch_size = 8
    lo = load_config("finetune_custom", "tiny,lora")
    lo.mesh.data, lo.mesh.fsdp = 2, 4
    lo.data.batch_size = 8
    lo.lora.base_dtype = "bfloat16"
    full.model.checkpoint = lo.model.checkpoint = "unused"  # the preset's shapes; nothing is read
    a, b = dry_run_memory(full), dry_run_memory(lo)
    assert b["trainable"] < a["trainable"] == a["parameters"]
    assert b["argument_bytes"] < a["argument_bytes"]


def test_example_jsonl_follows_the_schema():
    from molmo_jax.data.jsonl import read_jsonl

    records = read_jsonl(REPO_ROOT / "configs" / "examples" / "my_dataset.jsonl")
    assert len(records) >= 2
    kinds = {
        next(k for k in ("messages", "conversations", "points") if k in r["annotations"][0]) for r in records
    }
    assert kinds == {"points", "messages"}
    assert records[0]["image_path"].endswith("configs/examples/images/kitchen.jpg")
