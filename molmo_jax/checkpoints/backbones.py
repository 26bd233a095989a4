"""Stage-1 initialisation: pretrained Hugging Face vision towers and LLMs -> a Molmo model.

The original converts only these backbones and only inwards (`scripts/convert_hf_to_molmo.py`):
a CLIP (or MetaCLIP / SigLIP / DINOv2) vision encoder, keeping `vision.num_layers` blocks (23 of
CLIP-L's 24), and a Qwen2 / OLMo-2 / OLMoE language model; the connector and the 128 additional
embedding rows are freshly initialised (pooling / projector N(0, 0.02), biases 0, `new_embedding`
N(0, 0.02), `pad_embed` zeros). Everything is read tensor by tensor with the same naming tables
and checks as the Molmo checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
from flax import nnx

from molmo_jax.checkpoints.hf import TensorReader, load_tensors
from molmo_jax.checkpoints.naming import Rule, hf_decoder_rules, linear, same
from molmo_jax.model.config import ConfigError, MolmoConfig, VisionConfig, llm_from_hf_backbone
from molmo_jax.model.molmo import Molmo
from molmo_jax.model.vit import build_tower

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
)


# --------------------------------------------------------------------------------------------------
# Vision towers


def conv_patch_rule(hf: str, ours: str, width: int, patch: int) -> Rule:
    """Conv patch embedding `[D, 3, p, p]` <-> our kernel `[p*p*3, D]` over (row, col, channel)."""
    return Rule(
        (hf,),
        ((width, 3, patch, patch),),
        (ours,),
        lambda a: [a[0].transpose(0, 2, 3, 1).reshape(width, -1).T],
        lambda a: [a[0].T.reshape(width, patch, patch, 3).transpose(0, 3, 1, 2)],
    )


def torch_bicubic_resize(grid: np.ndarray, out: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """`[h, w, D]` -> `[out_h, out_w, D]` like torch `interpolate(mode="bicubic", align_corners=False,
    scale_factor=scale)` without antialias (cubic kernel a = -0.75, edge samples clamped), float32."""

    def weights(n_in: int, n_out: int, s: float) -> np.ndarray:
        a = np.float32(-0.75)
        src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) / np.float32(s) - np.float32(0.5)
        base = np.floor(src)
        t = (src - base).astype(np.float32)
        taps = [t + 1, t, 1 - t, 2 - t]  # distances to the 4 neighbours
        k = [
            ((a * d - 5 * a) * d + 8 * a) * d - 4 * a if i in (0, 3) else ((a + 2) * d - (a + 3)) * d * d + 1
            for i, d in enumerate(taps)
        ]
        m = np.zeros((n_out, n_in), np.float32)
        for i, w in enumerate(k):
            idx = np.clip(base.astype(int) - 1 + i, 0, n_in - 1)
            np.add.at(m, (np.arange(n_out), idx), w.astype(np.float32))
        return m

    wy = weights(grid.shape[0], out[0], scale[0])
    wx = weights(grid.shape[1], out[1], scale[1])
    return np.einsum("ih,hwd,jw->ijd", wy, grid.astype(np.float32), wx).astype(np.float32)


def resize_position_embeddings(pos: np.ndarray, n_prefix: int, grid: tuple[int, int]) -> np.ndarray:
    """DINO-style resize used by the original converter: bicubic with scale (g + 0.1) / sqrt(N)."""
    side = int(round(np.sqrt(pos.shape[0] - n_prefix)))
    if (side, side) == tuple(grid):
        return pos
    scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
    resized = torch_bicubic_resize(pos[n_prefix:].reshape(side, side, -1), grid, scale)
    return np.concatenate([pos[:n_prefix], resized.reshape(grid[0] * grid[1], -1)], axis=0)


def _clip_like_rules(v: VisionConfig, prefix: str, hf_pos: int) -> list[Rule]:
    """HF CLIPVisionModel / SiglipVisionModel names (`vision_model.*`)."""
    p, w, inner = prefix, v.width, v.num_heads * v.head_dim
    n_prefix = int(v.use_cls_token)
    n_pos = v.pos_grid[0] * v.pos_grid[1] + n_prefix
    rules = [
        conv_patch_rule(
            f"{p}embeddings.patch_embedding.weight", "vision.patch_embedding.kernel", w, v.patch_size
        ),
        Rule(
            (f"{p}embeddings.position_embedding.weight",),
            ((hf_pos, w),),
            ("vision.positional_embedding",),
            lambda a: [resize_position_embeddings(a[0], n_prefix, v.pos_grid)],
            lambda a: [a[0]] if hf_pos == n_pos else _no_export("position embeddings were resized"),
        ),
    ]
    if v.patch_bias:
        rules.append(same(f"{p}embeddings.patch_embedding.bias", "vision.patch_embedding.bias", (w,)))
    if v.use_cls_token:
        rules.append(same(f"{p}embeddings.class_embedding", "vision.class_embedding", (w,)))
    if v.use_pre_norm:
        rules += [
            same(f"{p}pre_layrnorm.weight", "vision.pre_ln.scale", (w,)),
            same(f"{p}pre_layrnorm.bias", "vision.pre_ln.bias", (w,)),
        ]
    for i in range(v.num_layers):
        hb, ob = f"{p}encoder.layers.{i}.", f"vision.blocks.{i}."
        for hn, on in (("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv")):
            rules += [
                linear(f"{hb}self_attn.{hn}.weight", f"{ob}attention.{on}.kernel", inner, w),
                same(f"{hb}self_attn.{hn}.bias", f"{ob}attention.{on}.bias", (inner,)),
            ]
        rules += [
            linear(f"{hb}self_attn.out_proj.weight", f"{ob}attention.wo.kernel", w, inner),
            same(f"{hb}self_attn.out_proj.bias", f"{ob}attention.wo.bias", (w,)),
            linear(f"{hb}mlp.fc1.weight", f"{ob}mlp.w1.kernel", v.mlp_dim, w),
            same(f"{hb}mlp.fc1.bias", f"{ob}mlp.w1.bias", (v.mlp_dim,)),
            linear(f"{hb}mlp.fc2.weight", f"{ob}mlp.w2.kernel", w, v.mlp_dim),
            same(f"{hb}mlp.fc2.bias", f"{ob}mlp.w2.bias", (w,)),
        ]
        for hn, on in (("layer_norm1", "attention_norm"), ("layer_norm2", "ffn_norm")):
            rules += [
                same(f"{hb}{hn}.weight", f"{ob}{on}.scale", (w,)),
                same(f"{hb}{hn}.bias", f"{ob}{on}.bias", (w,)),
            ]
    return rules


def _dinov2_rules(v: VisionConfig, prefix: str, hf_pos: int) -> list[Rule]:
    """HF Dinov2Model names."""
    p, w, inner = prefix, v.width, v.num_heads * v.head_dim
    rules = [
        conv_patch_rule(
            f"{p}embeddings.patch_embeddings.projection.weight",
            "vision.patch_embedding.kernel",
            w,
            v.patch_size,
        ),
        same(f"{p}embeddings.patch_embeddings.projection.bias", "vision.patch_embedding.bias", (w,)),
        Rule(
            (f"{p}embeddings.cls_token",),
            ((1, 1, w),),
            ("vision.class_embedding",),
            lambda a: [a[0].reshape(w)],
            lambda a: [a[0].reshape(1, 1, w)],
        ),
        Rule(
            (f"{p}embeddings.position_embeddings",),
            ((1, hf_pos, w),),
            ("vision.positional_embedding",),
            lambda a: [resize_position_embeddings(a[0][0], 1, v.pos_grid)],
            lambda a: _no_export("position embeddings were resized"),
        ),
    ]
    for i in range(v.num_layers):
        hb, ob = f"{p}encoder.layer.{i}.", f"vision.blocks.{i}."
        for hn, on in (("query", "wq"), ("key", "wk"), ("value", "wv")):
            rules += [
                linear(f"{hb}attention.attention.{hn}.weight", f"{ob}attention.{on}.kernel", inner, w),
                same(f"{hb}attention.attention.{hn}.bias", f"{ob}attention.{on}.bias", (inner,)),
            ]
        rules += [
            linear(f"{hb}attention.output.dense.weight", f"{ob}attention.wo.kernel", w, inner),
            same(f"{hb}attention.output.dense.bias", f"{ob}attention.wo.bias", (w,)),
            linear(f"{hb}mlp.fc1.weight", f"{ob}mlp.w1.kernel", v.mlp_dim, w),
            same(f"{hb}mlp.fc1.bias", f"{ob}mlp.w1.bias", (v.mlp_dim,)),
            linear(f"{hb}mlp.fc2.weight", f"{ob}mlp.w2.kernel", w, v.mlp_dim),
            same(f"{hb}mlp.fc2.bias", f"{ob}mlp.w2.bias", (w,)),
            same(f"{hb}layer_scale1.lambda1", f"{ob}ls1", (w,)),
            same(f"{hb}layer_scale2.lambda1", f"{ob}ls2", (w,)),
        ]
        for hn, on in (("norm1", "attention_norm"), ("norm2", "ffn_norm")):
            rules += [
                same(f"{hb}{hn}.weight", f"{ob}{on}.scale", (w,)),
                same(f"{hb}{hn}.bias", f"{ob}{on}.bias", (w,)),
            ]
    return rules


def _no_export(why: str):
    raise ValueError(f"this import is one-way: {why}")


@dataclasses.dataclass(frozen=True)
class VisionImport:
    """How to read one family of HF vision checkpoints."""

    rules: object  # (VisionConfig, prefix, hf_positions) -> list[Rule]
    prefixes: tuple[str, ...]  # tensor-name prefixes tried in order (vision-only vs full models)
    dropped: tuple[str, ...]  # names (relative to the prefix) the original discards
    layer_key: str  # f"{prefix}{layer_key}{i}." starts HF block i
    resize_mode: str  # the preprocessing resize that belongs to the tower


VISION_IMPORTS = {
    "clip": VisionImport(
        _clip_like_rules, ("vision_model.",), ("post_layernorm.",), "encoder.layers.", "default"
    ),
    "metaclip": VisionImport(
        _clip_like_rules, ("vision_model.",), ("post_layernorm.",), "encoder.layers.", "metaclip"
    ),
    "siglip": VisionImport(
        _clip_like_rules, ("vision_model.",), ("post_layernorm.", "head."), "encoder.layers.", "siglip"
    ),
    "dinov2": VisionImport(
        _dinov2_rules, ("", "dinov2."), ("layernorm.", "embeddings.mask_token"), "encoder.layer.", "dino"
    ),
}
_VISION_KIND = {
    "clip_vision_model": "clip",
    "clip": "clip",
    "siglip_vision_model": "siglip",
    "siglip": "siglip",
    "dinov2": "dinov2",
}
# Text towers of full CLIP / SigLIP checkpoints are not used.
_OTHER_TOWERS = ("text_model.", "logit_scale", "logit_bias", "visual_projection.", "text_projection.")


def vision_config_from_hf(
    cfg: dict, *, kind: str | None = None, num_layers: int | None = None, image_size: int | None = None
) -> VisionConfig:
    """VisionConfig of an HF CLIP / SigLIP / DINOv2 `config.json` (a full CLIP config's
    `vision_config` is used). `num_layers` keeps the first blocks (Molmo keeps 23 of CLIP-L's 24)."""
    model_type = cfg.get("model_type")
    if "vision_config" in cfg:
        cfg = {**cfg["vision_config"], "model_type": cfg["vision_config"].get("model_type", model_type)}
        model_type = cfg["model_type"]
    kind = kind or _VISION_KIND.get(model_type)
    if kind not in VISION_IMPORTS:
        raise ConfigError(
            f"vision config.json model_type={model_type!r}: no importer (known: {sorted(_VISION_KIND)})"
        )
    hf_layers = cfg["num_hidden_layers"]
    layers = min(num_layers or hf_layers, hf_layers)
    width, heads, patch = cfg["hidden_size"], cfg["num_attention_heads"], cfg["patch_size"]
    size = image_size or (336 if kind == "dinov2" else cfg.get("image_size", 336))
    grid = size // patch
    act = {"quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(
        cfg.get("hidden_act", "gelu")
    )
    if act is None:
        raise ConfigError(f"vision config.json hidden_act={cfg.get('hidden_act')!r} is not supported")
    common = dict(
        resize_mode=VISION_IMPORTS[kind].resize_mode,
        kind=kind,
        image_size=(size, size),
        patch_size=patch,
        width=width,
        num_heads=heads,
        head_dim=width // heads,
        num_layers=layers,
        activation=act,
        pos_grid=(grid, grid),
    )
    if kind in ("clip", "metaclip"):
        return VisionConfig(
            **common, mlp_dim=cfg["intermediate_size"], norm_eps=cfg.get("layer_norm_eps", 1e-5)
        )
    if kind == "siglip":
        return VisionConfig(
            **common,
            mlp_dim=cfg["intermediate_size"],
            norm_eps=cfg.get("layer_norm_eps", 1e-6),
            use_cls_token=False,
            use_pre_norm=False,
            patch_bias=True,
        )
    return VisionConfig(
        **common,
        layer_scale=True,
        mlp_dim=int(width * cfg.get("mlp_ratio", 4)),
        norm_eps=cfg.get("layer_norm_eps", 1e-6),
        use_pre_norm=False,
        patch_bias=True,
    )


def vision_import_rules(
    v: VisionConfig, reader: TensorReader, hf_layers: int
) -> tuple[list[Rule], tuple[str, ...]]:
    """Rules and the ignorable names for a vision checkpoint; raises naming a missing prefix."""
    spec = VISION_IMPORTS[v.kind]
    names = reader.names()
    prefix = next((p for p in spec.prefixes if any(n.startswith(p + spec.layer_key) for n in names)), None)
    if prefix is None:
        raise ConfigError(f"no {v.kind} vision tensors found (expected names starting with {spec.prefixes})")
    pos_name = next(n for n in names if "position_embedding" in n and n.startswith(prefix))
    hf_pos = int(np.prod(reader.shape(pos_name))) // v.width
    dropped = tuple(prefix + d for d in spec.dropped) + _OTHER_TOWERS
    dropped += tuple(f"{prefix}{spec.layer_key}{i}." for i in range(v.num_layers, hf_layers))
    return spec.rules(v, prefix, hf_pos), dropped


class VisionEncoder(nnx.Module):
    """A vision tower alone (parameters under `vision.*`, the same paths as inside `Molmo`)."""

    def __init__(self, config: VisionConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.vision = build_tower(config, rngs=rngs)

    def __call__(self, patches, layers):
        return self.vision(patches, layers)


def load_vision_tower(
    folder: str | Path, *, kind: str | None = None, num_layers: int | None = None
) -> VisionEncoder:
    """Import an HF vision checkpoint folder into a standalone tower."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    v = vision_config_from_hf(cfg, kind=kind, num_layers=num_layers)
    hf_layers = cfg.get("num_hidden_layers") or cfg.get("vision_config", {}).get("num_hidden_layers")
    reader = TensorReader.from_dir(folder)
    rules, dropped = vision_import_rules(v, reader, hf_layers)
    model = nnx.eval_shape(lambda: VisionEncoder(v, rngs=nnx.Rngs(0)))
    return load_tensors(model, reader, rules, allow_unused=dropped)


# --------------------------------------------------------------------------------------------------
# LLMs

_LLM_RULE_FAMILY = {"qwen2": "qwen2", "olmo2": "olmo2", "olmoe": "olmoe"}


def llm_import(folder: Path, *, vocab_size: int | None = None, additional_vocab_size: int = 128):
    """(LLMConfig, rules) for an HF Qwen2 / OLMo-2 / OLMoE causal LM folder."""
    cfg = json.loads((folder / "config.json").read_text())
    llm = llm_from_hf_backbone(cfg, additional_vocab_size=additional_vocab_size)
    if vocab_size is not None:  # tokenizer vocabulary (< embedding rows when the table is padded)
        llm = dataclasses.replace(llm, vocab_size=min(vocab_size, llm.embedding_size))
    return llm, hf_decoder_rules(llm, _LLM_RULE_FAMILY[cfg["model_type"]])


# --------------------------------------------------------------------------------------------------
# Stage-1 model


def stage1_config(
    vision_dir: Path, llm_dir: Path, preset: MolmoConfig, *, vision_layers: int | None = None
) -> MolmoConfig:
    """The preset's connector and dtypes with the vision tower and LLM sized from the checkpoints."""
    vcfg = json.loads((Path(vision_dir) / "config.json").read_text())
    vision = vision_config_from_hf(vcfg, num_layers=vision_layers or preset.vision.num_layers)
    llm, _ = llm_import(
        Path(llm_dir),
        vocab_size=preset.llm.vocab_size,
        additional_vocab_size=preset.llm.additional_vocab_size,
    )
    connector = dataclasses.replace(
        preset.connector,
        projector_hidden=llm.moe_hidden if llm.is_moe else llm.mlp_hidden,
    )
    return preset.replace(vision=vision, llm=llm, connector=connector)


def init_stage1(
    vision_dir: str | Path,
    llm_dir: str | Path,
    preset: MolmoConfig,
    *,
    seed: int = 0,
    vision_layers: int | None = None,
) -> Molmo:
    """A Molmo model with the pretrained tower and LLM and a freshly initialised connector."""
    vision_dir, llm_dir = Path(vision_dir), Path(llm_dir)
    config = stage1_config(vision_dir, llm_dir, preset, vision_layers=vision_layers)
    model = Molmo(config, rngs=nnx.Rngs(seed))
    vreader = TensorReader.from_dir(vision_dir)
    vcfg = json.loads((vision_dir / "config.json").read_text())
    hf_layers = vcfg.get("num_hidden_layers") or vcfg.get("vision_config", {}).get("num_hidden_layers")
    rules, dropped = vision_import_rules(config.vision, vreader, hf_layers)
    model = load_tensors(model, vreader, rules, allow_missing=("connector", "llm"), allow_unused=dropped)
    _, llm_rules = llm_import(
        llm_dir, vocab_size=config.llm.vocab_size, additional_vocab_size=config.llm.additional_vocab_size
    )
    return load_tensors(
        model,
        TensorReader.from_dir(llm_dir),
        llm_rules,
        allow_missing=("vision", "connector", "llm.new_embedding"),
    )


def copy_tokenizer_files(llm_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copy the LLM's tokenizer files next to a converted checkpoint (the processor reads them)."""
    copied = []
    for name in TOKENIZER_FILES:
        src = Path(llm_dir) / name
        if src.exists():
            shutil.copy(src, Path(out_dir) / name)
            copied.append(name)
    return copied
