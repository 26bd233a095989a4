"""Stage-1 backbones: HF CLIP / Qwen2 / OLMo-2 / OLMoE imports against the original converter and
HF outputs (golden README §6-7), SigLIP / DINOv2 imports against independent references, the
convert CLI, and full-size tower / LLM parameter counts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO_ROOT, golden_root, rel_err, require_golden
from flax import nnx
from safetensors.numpy import load_file, save_file

import molmo_jax
from molmo_jax.checkpoints.backbones import (
    VisionEncoder,
    init_stage1,
    llm_import,
    load_vision_tower,
    resize_position_embeddings,
    torch_bicubic_resize,
)
from molmo_jax.checkpoints.hf import TensorReader, export_tensors, load_tensors
from molmo_jax.checkpoints.naming import molmo_llm_rules, vision_rules
from molmo_jax.model.config import VISION_PRESETS, VisionConfig, get_preset
from molmo_jax.model.dinov2 import DINOV2_LARGE_336
from molmo_jax.model.llm import CausalLM
from molmo_jax.model.molmo import count_params


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, "<f4").tobytes()).hexdigest()


def _converted_folders() -> list[str]:
    root = golden_root() / "backbones"
    if not root.exists():
        return ["<missing golden backbones folder>"]
    return sorted(
        str(m.parent.relative_to(root))
        for m in root.rglob("meta.json")
        if "tensors" in json.loads(m.read_text()).get("official_conversion", {})
    )


def _export_repo_layout(folder) -> dict[str, np.ndarray]:
    """Import an HF backbone folder and write it back in the original repo's names."""
    cfg = json.loads((folder / "config.json").read_text())
    if "vision" in cfg.get("model_type", ""):
        enc = load_vision_tower(folder)
        return dict(export_tensors(enc, vision_rules(enc.config, "")))
    llm, rules = llm_import(folder)
    model = load_tensors(
        CausalLM(llm, rngs=nnx.Rngs(0)),
        TensorReader.from_dir(folder),
        rules,
        allow_missing=("llm.new_embedding",),
    )
    export = [r for r in molmo_llm_rules(llm, "transformer.", "molmo") if "new_embedding" not in r.hf[0]]
    return dict(export_tensors(model, export))


@pytest.mark.golden
@pytest.mark.parametrize("name", _converted_folders())
def test_import_equals_official_conversion(name: str):
    folder = require_golden("backbones", name)
    manifest = json.loads((folder / "meta.json").read_text())["official_conversion"]["tensors"]
    ours = _export_repo_layout(folder)
    assert sorted(ours) == sorted(manifest)
    for key, entry in manifest.items():
        assert list(ours[key].shape) == entry["shape"], key
        assert _sha(ours[key]) == entry["sha256_le_f32"], key
    if (folder / "molmo_converted.safetensors").exists():
        stored = load_file(str(folder / "molmo_converted.safetensors"))
        assert all(stored[k].tobytes() == ours[k].tobytes() for k in stored)


@pytest.mark.golden
def test_clip_import_reproduces_hf_hidden_states():
    folder = require_golden("backbones", "clip_tiny")
    enc = load_vision_tower(folder)
    out = np.load(folder / "outputs.npz")
    pix = out["pixel_values"]
    grid, p = enc.config.grid[0], enc.config.patch_size
    patches = pix.transpose(0, 2, 3, 1).reshape(len(pix), grid, p, grid, p, 3).transpose(0, 1, 3, 2, 4, 5)
    hidden = enc(jnp.asarray(patches.reshape(len(pix), grid * grid, -1)), list(range(enc.config.num_layers)))
    for i in range(enc.config.num_layers):  # block i output == HF hidden_states[i + 1]
        assert rel_err(hidden[i], out["hidden_states"][i + 1]) <= 1e-4, i


@pytest.mark.golden
def test_clip_import_equals_molmo_checkpoint_vit():
    """clip_tiny holds the ViT of models/qwen2_tiny: importing it gives those exact tensors."""
    enc = load_vision_tower(require_golden("backbones", "clip_tiny"))
    ours = dict(export_tensors(enc, vision_rules(enc.config, "model.vision_backbone.image_vit.")))
    ref = load_file(str(require_golden("models", "qwen2_tiny", "model.safetensors")))
    vit = {k: v for k, v in ref.items() if ".image_vit." in k}
    assert sorted(ours) == sorted(vit)
    assert all(ours[k].tobytes() == v.tobytes() for k, v in vit.items())


@pytest.mark.golden
def test_clip_keeps_first_blocks_and_rejects_unknown_tensors(tmp_path):
    src = require_golden("backbones", "clip_tiny")
    enc = load_vision_tower(src, num_layers=7)
    assert len(enc.vision.blocks) == 7
    tensors = load_file(str(src / "model.safetensors"))
    tensors["vision_model.encoder.layers.3.self_attn.extra.weight"] = np.zeros(2, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(
        ValueError, match="unexpected tensor 'vision_model.encoder.layers.3.self_attn.extra.weight'"
    ):
        load_vision_tower(tmp_path)


def _run_convert(vision, llm, out, preset="molmo_7b_d"):
    cmd = [
        sys.executable,
        "-m",
        "molmo_jax.cli.convert",
        "backbone",
        f"--vision={vision}",
        f"--llm={llm}",
        f"--preset={preset}",
        f"--out={out}",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)


@pytest.mark.golden
@pytest.mark.parametrize(
    "llm_name,preset",
    [("qwen2_tiny_llm", "molmo_7b_d"), ("olmo_tiny_llm", "molmo_7b_o"), ("olmoe_tiny/e8_top2", "molmoe_1b")],
)
def test_convert_cli_builds_a_loadable_stage1_checkpoint(tmp_path, llm_name, preset):
    vision, llm = require_golden("backbones", "clip_tiny"), require_golden("backbones", llm_name)
    run = _run_convert(vision, llm, tmp_path / "stage1", preset)
    assert run.returncode == 0, run.stderr[-3000:]
    model = molmo_jax.load_pretrained(tmp_path / "stage1")
    cfg = model.config
    assert cfg.connector == get_preset(preset).connector.__class__(
        **{**get_preset(preset).connector.__dict__, "projector_hidden": cfg.connector.projector_hidden}
    )
    # Imported weights are exactly the backbones'; the connector is fresh as the original makes it.
    hf_llm = load_file(str(llm / "model.safetensors"))
    np.testing.assert_array_equal(np.asarray(model.llm.embedding[...]), hf_llm["model.embed_tokens.weight"])
    np.testing.assert_array_equal(np.asarray(model.llm.lm_head[...]).T, hf_llm["lm_head.weight"])
    assert not np.any(np.asarray(model.connector.pad_embed[...]))
    w1 = np.asarray(model.connector.image_projector.w1.kernel[...])
    assert 0.015 < w1.std() < 0.025 and abs(w1.mean()) < 0.005
    assert 0.015 < np.asarray(model.llm.new_embedding[...]).std() < 0.025
    out = model(jnp.asarray([[1, 2, 3, 4]]))
    assert np.all(np.isfinite(np.asarray(out.logits)))
    _loads_into_stage1_config(tmp_path / "stage1", preset)
    if llm_name == "qwen2_tiny_llm":  # the stage-1 model's decoder is the HF model: same logits
        case = np.load(llm / "case_1.npz")
        logits = model(jnp.asarray(case["input_ids"])).logits
        assert rel_err(logits, case["logits"]) <= 1e-4


def _loads_into_stage1_config(folder, preset: str) -> None:
    """The trainer's stage-1 config starts from the converted folder (born on a 2-device mesh)."""
    import importlib.util

    from molmo_jax.model.sharding import make_mesh
    from molmo_jax.train.loop import build_model_config, init_params

    spec = importlib.util.spec_from_file_location("stage1", REPO_ROOT / "configs" / "stage1_caption.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(preset)
    c.model.checkpoint = str(folder)
    c.model.dtype = "float32"
    cfg = build_model_config(c, processor=None)
    mesh = make_mesh({"fsdp": 2})
    abstract = nnx.split(nnx.eval_shape(lambda: molmo_jax.Molmo(cfg, rngs=nnx.Rngs(0))), nnx.Param)[1]
    params = init_params(c, cfg, mesh, abstract)
    assert count_params(params) == count_params(abstract)
    assert params["llm"]["lm_head"][...].sharding.mesh.shape["fsdp"] == 2


def _random_tensors(shapes: dict, rng) -> dict:
    out = {}
    for name, shape in shapes.items():
        if name.endswith(("norm1.weight", "norm2.weight", "layer_norm1.weight", "layer_norm2.weight")):
            out[name] = (1 + 0.25 * rng.normal(size=shape)).astype(np.float32)
        elif name.endswith("bias") or "lambda" in name:
            out[name] = (0.1 * rng.normal(size=shape) + (1 if "lambda" in name else 0)).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            out[name] = (rng.normal(size=shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)
    return out


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _reference_vit(
    t: dict, names: dict, x: np.ndarray, layers: int, heads: int, eps: float, act, scale: bool
):
    """An independent float64 forward of an HF ViT's blocks (SigLIP / DINOv2 layouts)."""
    outs = []
    for i in range(layers):
        g = lambda k: t[names["block"].format(i=i) + names[k]].astype(np.float64)  # noqa: B023
        h = _ln(x, g("n1w"), g("n1b"), eps)
        q, k, v = (h @ g(f"{c}w").T + g(f"{c}b") for c in "qkv")
        n, tlen, d = q.shape
        split = lambda y, n=n, tlen=tlen, d=d: y.reshape(n, tlen, heads, d // heads).transpose(0, 2, 1, 3)
        s = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d // heads)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        a = (p @ split(v)).transpose(0, 2, 1, 3).reshape(n, tlen, d) @ g("ow").T + g("ob")
        x = x + (g("ls1") * a if scale else a)
        h = _ln(x, g("n2w"), g("n2b"), eps)
        m = act(h @ g("f1w").T + g("f1b")) @ g("f2w").T + g("f2b")
        x = x + (g("ls2") * m if scale else m)
        outs.append(x)
    return outs


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def test_siglip_import_matches_reference(tmp_path):
    w, heads, layers, patch, size, mlp = 48, 4, 3, 14, 84, 80
    grid = size // patch
    shapes = {
        "vision_model.embeddings.patch_embedding.weight": (w, 3, patch, patch),
        "vision_model.embeddings.patch_embedding.bias": (w,),
        "vision_model.embeddings.position_embedding.weight": (grid * grid, w),
        "vision_model.post_layernorm.weight": (w,),
        "vision_model.post_layernorm.bias": (w,),
        "vision_model.head.probe": (1, 1, w),
    }
    for i in range(layers):
        b = f"vision_model.encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {f"{b}self_attn.{n}.weight": (w, w), f"{b}self_attn.{n}.bias": (w,)}
        shapes |= {
            f"{b}layer_norm1.weight": (w,),
            f"{b}layer_norm1.bias": (w,),
            f"{b}layer_norm2.weight": (w,),
            f"{b}layer_norm2.bias": (w,),
            f"{b}mlp.fc1.weight": (mlp, w),
            f"{b}mlp.fc1.bias": (mlp,),
            f"{b}mlp.fc2.weight": (w, mlp),
            f"{b}mlp.fc2.bias": (w,),
        }
    t = _random_tensors(shapes, np.random.default_rng(0))
    save_file(t, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "siglip_vision_model",
                "hidden_size": w,
                "num_attention_heads": heads,
                "num_hidden_layers": layers,
                "intermediate_size": mlp,
                "patch_size": patch,
                "image_size": size,
                "hidden_act": "gelu_pytorch_tanh",
                "layer_norm_eps": 1e-6,
            }
        )
    )
    enc = load_vision_tower(tmp_path)
    assert enc.config.kind == "siglip" and not enc.config.use_cls_token
    pix = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
    patches = (
        pix.reshape(2, grid, patch, grid, patch, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, grid * grid, -1)
    )
    ours = enc(jnp.asarray(patches), [0, 1, 2])
    conv = t["vision_model.embeddings.patch_embedding.weight"].transpose(0, 2, 3, 1).reshape(w, -1)
    x = patches @ conv.T + t["vision_model.embeddings.patch_embedding.bias"]
    x = x + t["vision_model.embeddings.position_embedding.weight"]
    names = {
        "block": "vision_model.encoder.layers.{i}.",
        "n1w": "layer_norm1.weight",
        "n1b": "layer_norm1.bias",
        "n2w": "layer_norm2.weight",
        "n2b": "layer_norm2.bias",
        "f1w": "mlp.fc1.weight",
        "f1b": "mlp.fc1.bias",
        "f2w": "mlp.fc2.weight",
        "f2b": "mlp.fc2.bias",
        "ow": "self_attn.out_proj.weight",
        "ob": "self_attn.out_proj.bias",
    } | {f"{c}{s}": f"self_attn.{c}_proj.{'weight' if s == 'w' else 'bias'}" for c in "qkv" for s in "wb"}
    ref = _reference_vit(t, names, x.astype(np.float64), layers, heads, 1e-6, _gelu_tanh, scale=False)
    for i in range(layers):
        assert rel_err(ours[i], ref[i]) <= 1e-4


def test_dinov2_import_resizes_positions_and_matches_reference(tmp_path):
    w, heads, layers, patch, hf_grid = 40, 4, 2, 14, 9
    grid = 6  # 84 px crops
    shapes = {
        "embeddings.cls_token": (1, 1, w),
        "embeddings.mask_token": (1, w),
        "embeddings.position_embeddings": (1, 1 + hf_grid * hf_grid, w),
        "embeddings.patch_embeddings.projection.weight": (w, 3, patch, patch),
        "embeddings.patch_embeddings.projection.bias": (w,),
        "layernorm.weight": (w,),
        "layernorm.bias": (w,),
    }
    for i in range(layers):
        b = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            shapes |= {f"{b}attention.attention.{n}.weight": (w, w), f"{b}attention.attention.{n}.bias": (w,)}
        shapes |= {
            f"{b}attention.output.dense.weight": (w, w),
            f"{b}attention.output.dense.bias": (w,),
            f"{b}norm1.weight": (w,),
            f"{b}norm1.bias": (w,),
            f"{b}norm2.weight": (w,),
            f"{b}norm2.bias": (w,),
            f"{b}mlp.fc1.weight": (4 * w, w),
            f"{b}mlp.fc1.bias": (4 * w,),
            f"{b}mlp.fc2.weight": (w, 4 * w),
            f"{b}mlp.fc2.bias": (w,),
            f"{b}layer_scale1.lambda1": (w,),
            f"{b}layer_scale2.lambda1": (w,),
        }
    t = _random_tensors(shapes, np.random.default_rng(2))
    save_file(t, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "dinov2",
                "hidden_size": w,
                "num_attention_heads": heads,
                "num_hidden_layers": layers,
                "mlp_ratio": 4,
                "patch_size": patch,
                "image_size": 126,
                "hidden_act": "gelu",
                "layer_norm_eps": 1e-6,
            }
        )
    )
    from molmo_jax.checkpoints import backbones

    cfg = backbones.vision_config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    assert cfg.kind == "dinov2" and cfg.image_size == (336, 336)  # Molmo runs DINOv2 at 336 px
    cfg = VisionConfig(**{**cfg.__dict__, "image_size": (84, 84), "pos_grid": (grid, grid)})
    reader = TensorReader.from_dir(tmp_path)
    rules, dropped = backbones.vision_import_rules(cfg, reader, layers)
    enc = load_tensors(
        nnx.eval_shape(lambda: VisionEncoder(cfg, rngs=nnx.Rngs(0))), reader, rules, allow_unused=dropped
    )
    pos = resize_position_embeddings(t["embeddings.position_embeddings"][0], 1, (grid, grid))
    np.testing.assert_array_equal(np.asarray(enc.vision.positional_embedding[...]), pos)
    pix = np.random.default_rng(3).normal(size=(1, 84, 84, 3)).astype(np.float32)
    patches = (
        pix.reshape(1, grid, patch, grid, patch, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, grid * grid, -1)
    )
    ours = enc(jnp.asarray(patches), [0, 1])
    conv = t["embeddings.patch_embeddings.projection.weight"].transpose(0, 2, 3, 1).reshape(w, -1)
    x = patches @ conv.T + t["embeddings.patch_embeddings.projection.bias"]
    x = np.concatenate([t["embeddings.cls_token"].reshape(1, 1, w), x], axis=1) + pos
    names = {
        "block": "encoder.layer.{i}.",
        "n1w": "norm1.weight",
        "n1b": "norm1.bias",
        "n2w": "norm2.weight",
        "n2b": "norm2.bias",
        "f1w": "mlp.fc1.weight",
        "f1b": "mlp.fc1.bias",
        "f2w": "mlp.fc2.weight",
        "f2b": "mlp.fc2.bias",
        "ow": "attention.output.dense.weight",
        "ob": "attention.output.dense.bias",
        "ls1": "layer_scale1.lambda1",
        "ls2": "layer_scale2.lambda1",
    } | {
        f"{c}{s}": f"attention.attention.{n}.{'weight' if s == 'w' else 'bias'}"
        for c, n in zip("qkv", ("query", "key", "value"))
        for s in "wb"
    }
    ref = _reference_vit(t, names, x.astype(np.float64), layers, heads, 1e-6, _gelu, scale=True)
    for i in range(layers):
        assert rel_err(ours[i], ref[i]) <= 1e-4


def test_bicubic_resize_matches_torch():
    torch = pytest.importorskip("torch")
    grid = np.random.default_rng(4).normal(size=(37, 37, 5)).astype(np.float32)
    scale = (24.1 / 37, 24.1 / 37)
    ours = torch_bicubic_resize(grid, (24, 24), scale)
    ref = (
        torch.nn.functional.interpolate(
            torch.from_numpy(grid).permute(2, 0, 1)[None],
            scale_factor=scale,
            mode="bicubic",
            align_corners=False,
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    assert ref.shape == ours.shape
    assert np.abs(ours - ref).max() < 2e-5


def test_bicubic_resize_properties():
    const = np.full((37, 37, 2), 3.5, np.float32)
    np.testing.assert_allclose(torch_bicubic_resize(const, (24, 24), (24.1 / 37,) * 2), 3.5, atol=1e-5)
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None], (10, 10, 1))
    out = torch_bicubic_resize(ramp, (20, 20), (2.0, 2.0))[:, 0, 0]
    assert np.all(np.diff(out) >= -1e-6)  # monotone input stays monotone (away from clamped edges)


# Full-size towers (parameters actually used by Molmo; published totals in the comments):
#   CLIP ViT-L/14-336, 23 blocks: 290,909,184 (the 24-block vision_model is 303,507,456 incl. post-LN).
#   MetaCLIP L/14, 24 blocks, no post-LN: 303,505,408.
#   SigLIP so400m/14 at 378 px, no post-LN / MAP head: 412,984,944 (~428M with the head).
#   DINOv2-L/14 at 336 px: 303,553,536 (304,368,640 published: 37x37 positions, mask token, final LN).
TOWERS = {"clip": 290_909_184, "metaclip": 303_505_408, "siglip": 412_984_944}


@pytest.mark.parametrize("kind", sorted(TOWERS) + ["dinov2"])
def test_full_size_tower_parameter_counts(kind: str):
    cfg = DINOV2_LARGE_336 if kind == "dinov2" else VISION_PRESETS[kind]
    tower = nnx.eval_shape(lambda: VisionEncoder(cfg, rngs=nnx.Rngs(0)))
    assert count_params(tower) == TOWERS.get(kind, 303_553_536)


# LLMs: published totals of the base models + Molmo's 128 new embedding rows.
#   Qwen2-7B 7,615,616,512; Qwen2-72B 72,706,203,648; OLMoE-1B-7B-0924 6,919,161,856 (hub totals);
#   OLMo-7B-1024-preview 7,298,617,344 (from its tensor shapes: 32 x 202,391,552 per block + embeddings
#   and LM head 2 x 100352 x 4096 + final norm; no published exact total was at hand).
LLMS = {
    "molmo_7b_d": 7_615_616_512,
    "molmo_72b": 72_706_203_648,
    "molmoe_1b": 6_919_161_856,
    "molmo_7b_o": 7_298_617_344,
}


@pytest.mark.parametrize(
    "preset", [pytest.param(p, marks=pytest.mark.slow) if p == "molmo_72b" else p for p in sorted(LLMS)]
)
def test_full_size_llm_parameter_counts(preset: str):
    llm = get_preset(preset).llm
    model = nnx.eval_shape(lambda: CausalLM(llm, rngs=nnx.Rngs(0)))
    assert count_params(model) == LLMS[preset] + 128 * llm.d_model


def test_dinov2_is_a_registered_tower():
    from molmo_jax.model.vit import VISION_TOWERS, build_tower

    tower = build_tower(
        VisionConfig(
            kind="dinov2",
            width=16,
            num_heads=2,
            head_dim=8,
            num_layers=1,
            mlp_dim=32,
            image_size=(28, 28),
            pos_grid=(2, 2),
            use_pre_norm=False,
            patch_bias=True,
            layer_scale=True,
        ),
        rngs=nnx.Rngs(0),
    )
    assert "dinov2" in VISION_TOWERS and hasattr(tower.blocks[0], "ls1")
    assert tower(jnp.ones((1, 4, 588)), [0])[0].shape == (1, 5, 16)
    with pytest.raises(ValueError, match="vision.kind='nope' has no tower module"):
        build_tower(VisionConfig(kind="nope"), rngs=nnx.Rngs(0))


@pytest.mark.golden
def test_init_stage1_names_a_wrong_folder(tmp_path):
    llm = require_golden("backbones", "qwen2_tiny_llm")
    with pytest.raises(ValueError, match="vision config.json model_type='qwen2': no importer"):
        init_stage1(llm, llm, get_preset("molmo_7b_d"))
    with pytest.raises(FileNotFoundError):
        init_stage1(tmp_path / "none", llm, get_preset("molmo_7b_d"))


@pytest.mark.parametrize(
    "kind,normalize", [("siglip", "siglip"), ("dinov2", "dino"), ("metaclip", "metaclip")]
)
def test_tower_choice_sets_preprocessing(tmp_path, kind, normalize):
    """A checkpoint with a non-CLIP tower gets that tower's normalisation and resize from its config."""
    from molmo_jax.checkpoints.hf import save_pretrained
    from molmo_jax.model.config import tiny
    from molmo_jax.model.molmo import Molmo
    from molmo_jax.preprocess.image import _NORMALIZE_ALIASES
    from molmo_jax.preprocess.processor import MolmoProcessor
    from molmo_jax.preprocess.tokenizer import MolmoTokenizer

    preset = DINOV2_LARGE_336 if kind == "dinov2" else VISION_PRESETS[kind]
    base = tiny()
    vision = VisionConfig(
        **{
            **base.vision.__dict__,
            "kind": kind,
            "resize_mode": preset.resize_mode,
            "patch_bias": preset.patch_bias,
            "use_pre_norm": preset.use_pre_norm,
            "layer_scale": preset.layer_scale,
        }
    )
    model = Molmo(base.replace(vision=vision), rngs=nnx.Rngs(0))
    folder = save_pretrained(model, tmp_path / kind)
    assert molmo_jax.load_pretrained(folder).config.vision == vision
    tok = MolmoTokenizer.from_pretrained("Qwen2-7B")
    proc = MolmoProcessor.from_pretrained(folder, tokenizer=tok, overlap_margins=(2, 2))
    assert _NORMALIZE_ALIASES[proc.image_config.normalize] == _NORMALIZE_ALIASES[normalize]
    assert proc.image_config.resize == preset.resize_mode
    assert proc.image_config.crop_size == 84
