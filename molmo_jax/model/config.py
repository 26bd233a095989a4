"""Model hyper-parameters: frozen dataclasses, named presets, and the HF `config.json` reader.

Every number here comes from the released checkpoints (MOLMO_SPEC §1, §3, §4). Presets:
`molmoe_1b`, `molmo_7b_o`, `molmo_7b_d`, `molmo_72b`, plus `tiny` (prime-ish sizes so shape bugs
show) and `bench` (the shared CPU benchmark configuration).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

LLM_FAMILIES = ("qwen2", "olmo", "olmoe")
POOLING_KINDS = ("attention_meanq",)
PADDING_EMBED_KINDS = ("pad_and_partial_pad", "pad_embed", "regress", "none")
# Random initialisation of a freshly built tower (loaded checkpoints replace it): "normal" is the
# released models' std 0.02 (`initializer_range`); "fan_in" scales with the width (layers.kernel_init).
WEIGHT_INITS = ("normal", "fan_in")
CONNECTOR_INITS = WEIGHT_INITS
PROJECTOR_KINDS = ("mlp",)
MOE_IMPLS = ("ragged", "dense")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A configuration value is unknown or inconsistent; the message names the key."""


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {choices}")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A ViT image encoder (CLIP ViT-L/14-336 as released: 23 of its 24 blocks)."""

    kind: str = "clip"
    image_size: tuple[int, int] = (336, 336)
    patch_size: int = 14
    width: int = 1024
    num_heads: int = 16
    head_dim: int = 64
    num_layers: int = 23
    mlp_dim: int = 4096
    activation: str = "quick_gelu"
    norm_eps: float = 1e-5
    # Grid of the stored position embeddings (24x24 for CLIP-336); other grids are interpolated.
    pos_grid: tuple[int, int] = (24, 24)
    use_cls_token: bool = True
    use_pre_norm: bool = True
    patch_bias: bool = False
    # Image resize of the preprocessing that belongs to this tower (MOLMO_SPEC §1.3): "default"
    # (aspect-preserving letterbox, CLIP), "siglip", "dino", "metaclip" (direct resizes).
    resize_mode: str = "default"
    layer_scale: bool = False  # LayerScale on both residual branches (DINOv2)
    # Random init (training from scratch only): "normal" std 0.02 everywhere, as the recipes
    # initialise every tower; "fan_in" kernels std 1/sqrt(fan_in), class and position embeddings std
    # 1/sqrt(width), as CLIP initialises its ViT (layers.kernel_init).
    init: str = "normal"

    def __post_init__(self):
        _check_choice("vision.init", self.init, WEIGHT_INITS)
        # `kind` names a registered tower (molmo_jax.model.vit.VISION_TOWERS), checked when it is built.
        _check_choice("vision.activation", self.activation, ("quick_gelu", "gelu", "gelu_tanh"))
        if self.image_size[0] % self.patch_size or self.image_size[1] % self.patch_size:
            raise ConfigError(
                f"vision.image_size={self.image_size} is not a multiple of "
                f"vision.patch_size={self.patch_size}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * 3


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
    """ViT features -> LLM embeddings: layer taps, padding embeddings, 2x2 pooling, SwiGLU projector."""

    vit_layers: tuple[int, ...] = (-2, -9)
    padding_embed: str = "pad_and_partial_pad"
    pooling: str = "attention_meanq"
    pool_size: tuple[int, int] = (2, 2)
    projector: str = "mlp"
    projector_hidden: int = 18944  # width of each SwiGLU branch (the LLM's MLP hidden / 2 in the release)
    # Initial pooling / projector weights: "normal" N(0, 0.02) as the original; "fan_in" N(0, 1/fan_in)
    # keeps the image features' scale through the chain, which a narrow model trained from scratch
    # needs (at width 128, N(0, 0.02) hands the LLM features ~1e-5 in size: the pixels are invisible).
    init: str = "normal"

    def __post_init__(self):
        _check_choice("connector.padding_embed", self.padding_embed, PADDING_EMBED_KINDS)
        _check_choice("connector.init", self.init, CONNECTOR_INITS)
        _check_choice("connector.pooling", self.pooling, POOLING_KINDS)
        _check_choice("connector.projector", self.projector, PROJECTOR_KINDS)
        if not self.vit_layers:
            raise ConfigError("connector.vit_layers is empty")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """A decoder-only LLM: Qwen2 (pre-norm, qkv bias), OLMo (norm-after, QK-norm) or OLMoE (MoE)."""

    family: str = "qwen2"
    d_model: int = 3584
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    head_dim: int = 128
    mlp_hidden: int = 18944  # width of each SwiGLU branch (half of the fused `ff_proj` output)
    vocab_size: int = 152064  # tokenizer vocabulary the checkpoint was trained with
    embedding_size: int = 152064  # rows of the base embedding and of the LM head
    additional_vocab_size: int = 128  # `new_embedding` rows (image special tokens)
    qkv_bias: bool = True
    qk_norm: bool = False
    norm_after: bool = False
    norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 4096
    moe_num_experts: int = 0
    moe_top_k: int = 0
    moe_hidden: int = 0
    moe_impl: str = "ragged"
    # Residual dropout on the attention and feed-forward branches (training only, MOLMO_SPEC §8.4):
    # keep probability 1 - response_residual_dropout on response tokens when that is > 0, else
    # 1 - residual_dropout. 0 disables it (inference and the checkpoint configs).
    residual_dropout: float = 0.0
    response_residual_dropout: float = 0.0
    # Random init (training from scratch only): "normal" std 0.02 everywhere, the released models'
    # initializer_range; "fan_in" kernels std 1/sqrt(fan_in) and token embeddings std 1
    # (layers.kernel_init). At small widths 0.02 is far below 1/sqrt(d_model) and attention starts
    # almost uniform.
    init: str = "normal"

    def __post_init__(self):
        _check_choice("llm.family", self.family, LLM_FAMILIES)
        _check_choice("llm.init", self.init, WEIGHT_INITS)
        _check_choice("llm.moe_impl", self.moe_impl, MOE_IMPLS)
        for key in ("residual_dropout", "response_residual_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"llm.{key}={getattr(self, key)!r} must be in [0, 1)")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"llm.num_heads={self.num_heads} is not a multiple of llm.num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"llm.head_dim={self.head_dim} must be even for rotary embeddings")
        if self.embedding_size < self.vocab_size:
            raise ConfigError(
                f"llm.embedding_size={self.embedding_size} is smaller than llm.vocab_size={self.vocab_size}"
            )
        if self.is_moe and not (0 < self.moe_top_k <= self.moe_num_experts and self.moe_hidden > 0):
            raise ConfigError(
                f"llm.moe_top_k={self.moe_top_k}, llm.moe_num_experts={self.moe_num_experts}, "
                f"llm.moe_hidden={self.moe_hidden} do not describe a mixture of experts"
            )

    @property
    def is_moe(self) -> bool:
        return self.family == "olmoe"


@dataclasses.dataclass(frozen=True)
class MolmoConfig:
    """The whole model. `dtype` is the compute dtype; parameters are stored in `param_dtype`."""

    vision: VisionConfig = VisionConfig()
    connector: ConnectorConfig = ConnectorConfig()
    llm: LLMConfig = LLMConfig()
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Crops per group through the vision tower: -1 auto (2 on CPU, all on accelerators), 0 all.
    crop_chunk: int = -1
    # Towers whose blocks recompute their activations in the backward pass ("vit", "llm").
    remat: tuple[str, ...] = ()

    def __post_init__(self):
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("param_dtype", self.param_dtype, DTYPES)
        for tower in self.remat:
            _check_choice("remat", tower, ("vit", "llm"))
        for layer in self.connector.vit_layers:
            if not -self.vision.num_layers <= layer < self.vision.num_layers:
                raise ConfigError(
                    f"connector.vit_layers has {layer}, outside a {self.vision.num_layers}-block ViT"
                )

    def replace(self, **changes: Any) -> MolmoConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MolmoConfig:
        return cls(
            vision=_build(VisionConfig, d.get("vision", {}), "vision"),
            connector=_build(ConnectorConfig, d.get("connector", {}), "connector"),
            llm=_build(LLMConfig, d.get("llm", {}), "llm"),
            **{k: v for k, v in d.items() if k not in ("vision", "connector", "llm")},
        )


def _build(cls, values: dict, prefix: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + '.' + k for k in unknown)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**fixed)


# --------------------------------------------------------------------------------------------------
# Presets

CLIP_L14_336 = VisionConfig()  # openai/clip-vit-large-patch14-336 as Molmo uses it (23 of 24 blocks)
# facebook/metaclip-l14-fullcc2.5b: the CLIP architecture with all 24 blocks (MOLMO_SPEC §1.3).
METACLIP_L14_336 = VisionConfig(kind="metaclip", num_layers=24, resize_mode="metaclip")
# google/siglip-so400m-patch14-384 at 378 px: 27x27 patches, no CLS token, no pre-LN, patch bias.
SIGLIP_SO400M_378 = VisionConfig(
    kind="siglip",
    image_size=(378, 378),
    width=1152,
    num_heads=16,
    head_dim=72,
    num_layers=27,
    mlp_dim=4304,
    activation="gelu_tanh",
    norm_eps=1e-6,
    pos_grid=(27, 27),
    use_cls_token=False,
    use_pre_norm=False,
    patch_bias=True,
    resize_mode="siglip",
)
VISION_PRESETS = {"clip": CLIP_L14_336, "metaclip": METACLIP_L14_336, "siglip": SIGLIP_SO400M_378}


def _molmo(llm: LLMConfig, projector_hidden: int, **kw) -> MolmoConfig:
    return MolmoConfig(
        vision=CLIP_L14_336, connector=ConnectorConfig(projector_hidden=projector_hidden), llm=llm, **kw
    )


def molmo_7b_d() -> MolmoConfig:
    """Molmo-7B-D-0924: CLIP ViT-L/14-336 + Qwen2-7B."""
    return _molmo(LLMConfig(), projector_hidden=18944)


def molmo_72b() -> MolmoConfig:
    """Molmo-72B-0924: CLIP ViT-L/14-336 + Qwen2-72B."""
    llm = LLMConfig(
        d_model=8192, num_layers=80, num_heads=64, num_kv_heads=8, mlp_hidden=29568, norm_eps=1e-5
    )
    return _molmo(llm, projector_hidden=29568)


def molmo_7b_o() -> MolmoConfig:
    """Molmo-7B-O-0924: CLIP ViT-L/14-336 + OLMo-7B-1024-preview (norm-after, QK-norm)."""
    llm = LLMConfig(
        family="olmo",
        d_model=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        mlp_hidden=11008,
        vocab_size=100278,
        embedding_size=100352,
        qkv_bias=False,
        qk_norm=True,
        norm_after=True,
        rope_theta=5e5,
    )
    return _molmo(llm, projector_hidden=11008)


def molmoe_1b() -> MolmoConfig:
    """MolmoE-1B-0924: CLIP ViT-L/14-336 + OLMoE-1B-7B (64 experts, top-8)."""
    llm = LLMConfig(
        family="olmoe",
        d_model=2048,
        num_layers=16,
        num_heads=16,
        num_kv_heads=16,
        mlp_hidden=1024,
        vocab_size=50280,
        embedding_size=50304,
        qkv_bias=False,
        qk_norm=True,
        norm_eps=1e-5,
        rope_theta=1e4,
        moe_num_experts=64,
        moe_top_k=8,
        moe_hidden=1024,
    )
    return _molmo(llm, projector_hidden=1024)


def tiny(family: str = "qwen2") -> MolmoConfig:
    """A small random-init model for tests: odd sizes so that mixed-up axes fail loudly."""
    vision = VisionConfig(
        width=40, num_heads=4, head_dim=10, num_layers=5, mlp_dim=72, image_size=(84, 84), pos_grid=(6, 6)
    )
    base = dict(
        d_model=56,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=14,
        vocab_size=509,
        embedding_size=512,
        additional_vocab_size=128,
    )
    if family == "qwen2":
        llm = LLMConfig(**base, mlp_hidden=88)
    elif family == "olmo":
        llm = LLMConfig(
            **base,
            mlp_hidden=88,
            family="olmo",
            qkv_bias=False,
            qk_norm=True,
            norm_after=True,
            rope_theta=5e5,
        )
    elif family == "olmoe":
        llm = LLMConfig(
            **base,
            mlp_hidden=24,
            family="olmoe",
            qkv_bias=False,
            qk_norm=True,
            norm_eps=1e-5,
            rope_theta=1e4,
            moe_num_experts=7,
            moe_top_k=3,
            moe_hidden=24,
        )
    else:
        raise ConfigError(f"tiny: unknown family {family!r}; choose from {LLM_FAMILIES}")
    return MolmoConfig(
        vision=vision,
        connector=ConnectorConfig(vit_layers=(-2, -4), projector_hidden=llm.mlp_hidden),
        llm=llm,
    )


def bench() -> MolmoConfig:
    """The shared CPU benchmark configuration (shared/bench/README.md), 63.9 M parameters."""
    vision = VisionConfig(width=256, num_heads=4, head_dim=64, num_layers=8, mlp_dim=1024)
    llm = LLMConfig(
        d_model=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
        mlp_hidden=1408,
        vocab_size=32000,
        embedding_size=32000,
    )
    return MolmoConfig(
        vision=vision, connector=ConnectorConfig(vit_layers=(-2, -8), projector_hidden=1408), llm=llm
    )


def demo() -> MolmoConfig:
    """The model `make demo` trains from scratch on one CPU: a small CLIP-style ViT on 140-px crops
    (10x10 patches of 14 px, pooled 2x2 as in the released models) and a small Qwen2-style decoder.
    The vocabulary is sized to the demo's own tokenizer when training (`model.vocab_from_tokenizer`)."""
    vision = VisionConfig(
        width=128,
        num_heads=4,
        head_dim=32,
        num_layers=4,
        mlp_dim=512,
        image_size=(140, 140),
        pos_grid=(10, 10),
    )
    llm = LLMConfig(
        d_model=192,
        num_layers=3,
        num_heads=3,
        num_kv_heads=1,
        head_dim=64,
        mlp_hidden=512,
        vocab_size=1024,
        embedding_size=1024,
        additional_vocab_size=128,
    )
    return MolmoConfig(
        vision=vision,
        connector=ConnectorConfig(vit_layers=(-1, -3), projector_hidden=llm.mlp_hidden, init="fan_in"),
        llm=llm,
    )


PRESETS = {
    "molmoe_1b": molmoe_1b,
    "molmo_7b_o": molmo_7b_o,
    "molmo_7b_d": molmo_7b_d,
    "molmo_72b": molmo_72b,
    "tiny": tiny,
    "tiny_olmo": lambda: tiny("olmo"),
    "tiny_olmoe": lambda: tiny("olmoe"),
    "bench": bench,
    "demo": demo,
}


def get_preset(name: str) -> MolmoConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------------------------------
# Hugging Face `config.json`

_VISION_KIND_FROM_HF = {
    "openai": "clip",
    "siglip": "siglip",
    "dino": "dinov2",
    "dinov2": "dinov2",
    "metaclip": "metaclip",
    "clip": "clip",
}


def from_hf_config(cfg: dict | str | Path) -> MolmoConfig:
    """Build a MolmoConfig from a released Molmo `config.json` (dict or path).

    The 7B releases leave the vision / connector settings implicit (hard-coded in their remote
    code); absent keys take the released values. MolmoE's repo-style keys (`d_model`, `n_layers`,
    `moe_num_experts`, ...) are read as well.
    """
    if not isinstance(cfg, dict):
        with open(cfg) as f:
            cfg = json.load(f)
    get = cfg.get

    def first(*keys, default=None):
        for k in keys:
            if get(k) is not None:
                return get(k)
        return default

    d_model = first("hidden_size", "d_model")
    num_heads = first("num_attention_heads", "n_heads")
    if d_model is None or num_heads is None:
        raise ConfigError("config.json lacks hidden_size / num_attention_heads")
    num_kv_heads = first("num_key_value_heads", "n_kv_heads", default=num_heads)
    head_dim = first("head_dim", default=d_model // num_heads)
    num_experts = first("moe_num_experts", "num_experts", default=0) or 0
    is_moe = num_experts > 0 or get("block_type") == "moe"
    qk_norm = bool(first("attention_layer_norm", default=False))
    norm_after = bool(first("norm_after", default=False))
    inter = first("intermediate_size", "mlp_hidden_size")
    if is_moe:
        family = "olmoe"
        moe_hidden = inter if inter else first("mlp_ratio", default=1) * d_model // 2
        mlp_hidden = moe_hidden
    else:
        family = "olmo" if (qk_norm or norm_after) else "qwen2"
        if inter is None:
            raise ConfigError("config.json lacks intermediate_size")
        mlp_hidden = inter // 2
        moe_hidden = 0
    vocab = first("vocab_size")
    llm = LLMConfig(
        family=family,
        d_model=d_model,
        num_layers=first("num_hidden_layers", "n_layers"),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        mlp_hidden=mlp_hidden,
        vocab_size=vocab,
        embedding_size=first("embedding_size", default=vocab),
        additional_vocab_size=first("additional_vocab_size", default=128),
        qkv_bias=bool(first("qkv_bias", default=False)),
        qk_norm=qk_norm,
        norm_after=norm_after,
        norm_eps=first("layer_norm_eps", "rms_norm_eps", default=1e-6),
        rope_theta=float(first("rope_theta", default=1e4)),
        max_position_embeddings=first("max_position_embeddings", "max_sequence_length", default=4096),
        moe_num_experts=num_experts if is_moe else 0,
        moe_top_k=first("moe_top_k", "num_experts_per_tok", default=0) if is_moe else 0,
        moe_hidden=moe_hidden,
    )
    if get("weight_tying") or get("tie_word_embeddings"):
        raise ConfigError("weight_tying=true is not supported: released Molmo models have an untied LM head")
    for key, ok in (
        ("layer_norm_type", ("rms", None)),
        ("image_projector", ("mlp", None)),
        ("image_pooling_2d", ("attention-meanq", "attention_meanq", None)),
    ):
        if get(key) not in ok:
            raise ConfigError(f"config.json {key}={get(key)!r} is not supported (expected one of {ok})")
    vb = get("vision_backbone") or {}
    vision = CLIP_L14_336
    if vb:
        image_size = tuple(vb.get("image_default_input_size", (336, 336)))
        patch = vb.get("image_patch_size", 14)
        num_pos = vb.get("image_num_pos", 577)
        side = int(round((num_pos - 1) ** 0.5))
        kind = _VISION_KIND_FROM_HF.get(vb.get("image_model_type", "openai"))
        if kind is None:
            raise ConfigError(f"config.json vision_backbone.image_model_type={vb.get('image_model_type')!r}")
        vision = VisionConfig(
            kind=kind,
            image_size=image_size,
            patch_size=patch,
            width=vb.get("image_emb_dim", 1024),
            num_heads=vb.get("image_num_heads", 16),
            head_dim=vb.get("image_head_dim", 64),
            num_layers=vb.get("image_num_layers", 23),
            mlp_dim=vb.get("image_mlp_dim", 4096),
            activation=vb.get("image_mlp_activations", "quick_gelu"),
            norm_eps=vb.get("image_norm_eps", 1e-5),
            pos_grid=(side, side),
            resize_mode=vb.get("resize_mode", "default"),
            # Structure flags for towers other than CLIP (absent from the released configs).
            use_cls_token=vb.get("image_use_cls_token", True),
            use_pre_norm=vb.get("image_use_pre_norm", True),
            patch_bias=vb.get("image_patch_bias", False),
            layer_scale=vb.get("image_layer_scale", False),
        )
    pool = (get("image_pooling_h") or 2, get("image_pooling_w") or 2)
    connector = ConnectorConfig(
        vit_layers=tuple(first("vit_layers", default=(-2, -9))),
        padding_embed=first("image_padding_embed", default="pad_and_partial_pad"),
        pool_size=pool,
        projector_hidden=first("image_projector_hidden_size", default=mlp_hidden),
    )
    return MolmoConfig(vision=vision, connector=connector, llm=llm)


def to_hf_config(config: MolmoConfig) -> dict:
    """The released `config.json` layout for a MolmoConfig (inverse of `from_hf_config`)."""
    llm, vis, con = config.llm, config.vision, config.connector
    out: dict[str, Any] = {
        "architectures": ["MolmoForCausalLM"],
        "model_type": "molmo",
        "attention_layer_norm": llm.qk_norm,
        "clip_qkv": None,
        "embedding_size": llm.embedding_size,
        "hidden_size": llm.d_model,
        "initializer_range": 0.02,
        "intermediate_size": llm.mlp_hidden if llm.is_moe else 2 * llm.mlp_hidden,
        "layer_norm_eps": llm.norm_eps,
        "layer_norm_type": "rms",
        "max_position_embeddings": llm.max_position_embeddings,
        "norm_after": llm.norm_after,
        "num_attention_heads": llm.num_heads,
        "num_hidden_layers": llm.num_layers,
        "num_key_value_heads": llm.num_kv_heads,
        "qkv_bias": llm.qkv_bias,
        "rope_theta": llm.rope_theta,
        "tie_word_embeddings": False,
        "torch_dtype": config.param_dtype,
        "use_cache": True,
        "use_position_ids": True,
        "vocab_size": llm.vocab_size,
        "weight_tying": False,
        "additional_vocab_size": llm.additional_vocab_size,
        "vit_layers": list(con.vit_layers),
        "image_pooling_2d": "attention-meanq",
        "image_pooling_h": con.pool_size[0],
        "image_pooling_w": con.pool_size[1],
        "image_projector": con.projector,
        "image_padding_embed": con.padding_embed,
        "vision_backbone": {
            "image_model_type": {v: k for k, v in _VISION_KIND_FROM_HF.items()}.get(vis.kind, vis.kind)
            if vis.kind != "clip"
            else "openai",
            "image_default_input_size": list(vis.image_size),
            "image_patch_size": vis.patch_size,
            "image_emb_dim": vis.width,
            "image_num_heads": vis.num_heads,
            "image_head_dim": vis.head_dim,
            "image_num_layers": vis.num_layers,
            "image_mlp_dim": vis.mlp_dim,
            "image_mlp_activations": vis.activation,
            "image_num_pos": vis.pos_grid[0] * vis.pos_grid[1] + int(vis.use_cls_token),
            "image_norm_eps": vis.norm_eps,
            "resize_mode": vis.resize_mode,
        },
    }
    flags = {
        "image_use_cls_token": vis.use_cls_token,
        "image_use_pre_norm": vis.use_pre_norm,
        "image_patch_bias": vis.patch_bias,
        "image_layer_scale": vis.layer_scale,
    }
    defaults = {
        "image_use_cls_token": True,
        "image_use_pre_norm": True,
        "image_patch_bias": False,
        "image_layer_scale": False,
    }
    out["vision_backbone"].update(
        {k: v for k, v in flags.items() if v != defaults[k]}
    )  # non-CLIP towers only
    if llm.is_moe:
        out.update(
            block_type="moe",
            moe_num_experts=llm.moe_num_experts,
            moe_top_k=llm.moe_top_k,
            intermediate_size=llm.moe_hidden,
        )
    if con.projector_hidden != out["intermediate_size"] // (1 if llm.is_moe else 2):
        out["image_projector_hidden_size"] = con.projector_hidden  # only written when non-standard
    return out


_BACKBONE_FAMILY = {"qwen2": "qwen2", "olmo2": "olmo", "olmoe": "olmoe"}


def llm_from_hf_backbone(cfg: dict | str | Path, *, additional_vocab_size: int = 128) -> LLMConfig:
    """LLMConfig from a Hugging Face `Qwen2ForCausalLM` / `Olmo2ForCausalLM` / `OlmoeForCausalLM`
    `config.json` (the stage-1 LLM sources)."""
    if not isinstance(cfg, dict):
        with open(cfg) as f:
            cfg = json.load(f)
    model_type = cfg.get("model_type")
    if model_type not in _BACKBONE_FAMILY:
        raise ConfigError(f"config.json model_type={model_type!r}; supported: {sorted(_BACKBONE_FAMILY)}")
    if cfg.get("tie_word_embeddings"):
        raise ConfigError("config.json tie_word_embeddings=true is not supported (Molmo's LM head is untied)")
    family = _BACKBONE_FAMILY[model_type]
    heads = cfg["num_attention_heads"]
    moe = family == "olmoe"
    return LLMConfig(
        family=family,
        d_model=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        mlp_hidden=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        embedding_size=cfg["vocab_size"],
        additional_vocab_size=additional_vocab_size,
        qkv_bias=family == "qwen2",
        qk_norm=family != "qwen2",
        norm_after=family == "olmo",
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=float(cfg.get("rope_theta", 1e4)),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        moe_num_experts=cfg.get("num_experts", 0) if moe else 0,
        moe_top_k=cfg.get("num_experts_per_tok", 0) if moe else 0,
        moe_hidden=cfg["intermediate_size"] if moe else 0,
    )
