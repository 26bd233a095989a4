"""HF-layout checkpoints: byte-identical round trips, sharded files, MolmoE layouts, clear errors."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_golden
from flax import nnx
from safetensors.numpy import load_file, save_file

import molmo_jax
from molmo_jax.checkpoints.hf import CheckpointError, TensorReader, load_tensors, save_pretrained
from molmo_jax.checkpoints.naming import molmo_rules
from molmo_jax.model.config import ConfigError, from_hf_config, tiny
from molmo_jax.model.molmo import Molmo


def _tensors(folder) -> dict[str, np.ndarray]:
    reader = TensorReader.from_dir(folder)
    return {name: reader.get(name) for name in reader.names()}


@pytest.mark.golden
@pytest.mark.parametrize("name", ["qwen2_tiny", "olmo_tiny"])
def test_load_save_load_is_byte_identical(tmp_path, name):
    src = require_golden("models", name)
    model = molmo_jax.load_pretrained(src)
    out = molmo_jax.save_pretrained(model, tmp_path / "a")
    original, saved = load_file(str(src / "model.safetensors")), _tensors(out)
    assert sorted(saved) == sorted(original)
    for key, ref in original.items():
        assert saved[key].dtype == ref.dtype and saved[key].shape == ref.shape, key
        assert saved[key].tobytes() == ref.tobytes(), key
    assert from_hf_config(out / "config.json") == from_hf_config(src / "config.json")
    again = molmo_jax.save_pretrained(molmo_jax.load_pretrained(out), tmp_path / "b")
    assert all(_tensors(again)[k].tobytes() == v.tobytes() for k, v in saved.items())


@pytest.mark.golden
def test_sharded_checkpoint_round_trip(tmp_path):
    src = require_golden("models", "olmo_tiny")
    model = molmo_jax.load_pretrained(src)
    out = save_pretrained(model, tmp_path / "sharded", max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 3 and all((out / f).exists() for f in files)
    assert not list(out.glob("*.tmp"))
    reloaded = molmo_jax.load_pretrained(out)
    ids = jnp.asarray([[5, 6, 7, -1]])
    assert np.array_equal(np.asarray(model(ids).logits), np.asarray(reloaded(ids).logits))


@pytest.mark.parametrize("layout", ["molmoe_repo", "molmoe_hub"])
def test_molmoe_layouts_round_trip(tmp_path, layout):
    model = Molmo(tiny("olmoe"), rngs=nnx.Rngs(7))
    folder = save_pretrained(model, tmp_path / layout, layout=layout)
    names = set(TensorReader.from_dir(folder).names())
    if layout == "molmoe_hub":
        assert (
            "lm_head.weight" in names and "model.transformer.blocks.0.mlp.experts.6.down_proj.weight" in names
        )
    else:
        assert "model.transformer.blocks.0.ffn.experts.mlp.w2" in names
    loaded = molmo_jax.load_pretrained(folder)
    ids = jnp.asarray([[1, 2, 3, 4, 5]])
    assert np.array_equal(np.asarray(model(ids).logits), np.asarray(loaded(ids).logits))


def test_repo_expert_layout_matches_per_expert_tensors(tmp_path):
    """w1/v1 rows e*F:(e+1)*F are expert e's gate/up weights; w2 holds each down weight transposed."""
    model = Molmo(tiny("olmoe"), rngs=nnx.Rngs(1))
    repo = load_file(str(save_pretrained(model, tmp_path / "r", layout="molmoe_repo") / "model.safetensors"))
    hub = load_file(str(save_pretrained(model, tmp_path / "h", layout="molmoe_hub") / "model.safetensors"))
    f = model.config.llm.moe_hidden
    for e in range(model.config.llm.moe_num_experts):
        rows = slice(e * f, (e + 1) * f)
        pre = "model.transformer.blocks.1."
        assert np.array_equal(
            repo[pre + "ffn.experts.mlp.w1"][rows], hub[pre + f"mlp.experts.{e}.gate_proj.weight"]
        )
        assert np.array_equal(
            repo[pre + "ffn.experts.mlp.v1"][rows], hub[pre + f"mlp.experts.{e}.up_proj.weight"]
        )
        assert np.array_equal(
            repo[pre + "ffn.experts.mlp.w2"][rows], hub[pre + f"mlp.experts.{e}.down_proj.weight"].T
        )


@pytest.fixture
def tiny_checkpoint(tmp_path):
    src = require_golden("models", "qwen2_tiny")
    dst = tmp_path / "ckpt"
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    return src, dst, load_file(str(src / "model.safetensors"))


@pytest.mark.golden
def test_missing_tensor_is_named(tiny_checkpoint):
    _, dst, tensors = tiny_checkpoint
    del tensors["model.transformer.blocks.1.ff_out.weight"]
    save_file(tensors, str(dst / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"missing tensor 'model\.transformer\.blocks\.1\.ff_out\.weight'"
    ):
        molmo_jax.load_pretrained(dst)


@pytest.mark.golden
def test_unexpected_tensor_is_named(tiny_checkpoint):
    _, dst, tensors = tiny_checkpoint
    tensors["model.transformer.blocks.0.surprise"] = np.zeros(3, np.float32)
    save_file(tensors, str(dst / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.transformer\.blocks\.0\.surprise'"):
        molmo_jax.load_pretrained(dst)


@pytest.mark.golden
def test_shape_mismatch_names_tensor_and_both_shapes(tiny_checkpoint):
    _, dst, tensors = tiny_checkpoint
    tensors["model.vision_backbone.pad_embed"] = np.zeros((2, 100), np.float32)
    save_file(tensors, str(dst / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"'model\.vision_backbone\.pad_embed' has shape \(2, 100\).*\(2, 128\)"
    ):
        molmo_jax.load_pretrained(dst)


@pytest.mark.golden
def test_unknown_config_value_is_named(tiny_checkpoint):
    src, dst, _ = tiny_checkpoint
    shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["layer_norm_type"] = "batchnorm"
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="layer_norm_type='batchnorm'"):
        molmo_jax.load_pretrained(dst)
    cfg["layer_norm_type"] = "rms"
    cfg["vision_backbone"]["image_mlp_activations"] = "relu6"
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="vision.activation='relu6'"):
        molmo_jax.load_pretrained(dst)


def test_no_weights_in_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        TensorReader.from_dir(tmp_path)


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="could not be fetched from the Hugging Face hub"):
        molmo_jax.load_pretrained("allenai/Molmo-7B-D-0924-not-cached")


def test_sharded_load_places_parameters_on_mesh(tmp_path):
    from molmo_jax.model.sharding import make_mesh

    model = Molmo(tiny(), rngs=nnx.Rngs(2))
    folder = save_pretrained(model, tmp_path / "m")
    mesh = make_mesh({"fsdp": 2, "tensor": 2, "data": -1})
    loaded = molmo_jax.load_pretrained(folder, mesh=mesh)
    q = loaded.llm.blocks[0].attn.q[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    ids = jnp.asarray([[3, 4, 5, 6, -1]])
    assert np.allclose(np.asarray(loaded(ids).logits), np.asarray(model(ids).logits), atol=1e-5)


def test_rules_cover_tiny_models_exactly():
    for family in ("qwen2", "olmo", "olmoe"):
        model = Molmo(tiny(family), rngs=nnx.Rngs(0))
        ours = {p for r in molmo_rules(model.config) for p in r.ours}
        flat = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        assert ours == flat, family


def test_load_into_concrete_model_keeps_allowed_missing(tmp_path):
    model = Molmo(tiny(), rngs=nnx.Rngs(0))
    folder = save_pretrained(model, tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.transformer.wte.new_embedding"]
    save_file(tensors, str(folder / "model.safetensors"))
    fresh = Molmo(tiny(), rngs=nnx.Rngs(5))
    before = np.asarray(fresh.llm.new_embedding[...]).copy()
    rules = [r for r in molmo_rules(model.config) if "wte.new_embedding" not in r.hf[0]]
    loaded = load_tensors(fresh, TensorReader.from_dir(folder), rules, allow_missing=("llm.new_embedding",))
    assert np.array_equal(np.asarray(loaded.llm.new_embedding[...]), before)
    assert np.array_equal(np.asarray(loaded.llm.lm_head[...]), np.asarray(model.llm.lm_head[...]))


def _write_torch_bin(folder, tensors: dict) -> None:
    torch = pytest.importorskip("torch")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, folder / "pytorch_model.bin")


def test_molmoe_pytorch_bin_is_converted_once(tmp_path):
    """MolmoE-1B ships a pickled state dict: read with weights_only=True, cached as safetensors."""
    model = Molmo(tiny("olmoe"), rngs=nnx.Rngs(3))
    src = save_pretrained(model, tmp_path / "st", layout="molmoe_hub")
    folder = tmp_path / "bin"
    _write_torch_bin(folder, load_file(str(src / "model.safetensors")))
    shutil.copy(src / "config.json", folder / "config.json")
    loaded = molmo_jax.load_pretrained(folder)
    assert (folder / "model.safetensors").exists()
    ids = jnp.asarray([[7, 8, 9]])
    assert np.array_equal(np.asarray(loaded(ids).logits), np.asarray(model(ids).logits))


class _NotATensor:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def test_pytorch_bin_with_objects_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"model.transformer.ln_f.weight": _NotATensor()}, folder / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        TensorReader.from_dir(folder)
    assert not (folder / "model.safetensors").exists()
