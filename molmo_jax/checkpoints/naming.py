"""Declarative name tables between checkpoint layouts and our parameter paths.

A `Rule` ties one or more checkpoint tensors to one or more of our parameters, with the two
pure reshapes that convert between them (PyTorch `[out, in]` Linear weights vs our `[in, out]`
kernels; fused q/k/v and [up; gate] tensors vs our separate ones; per-expert tensors vs our
stacked `[experts, ...]` arrays). All conversions are transposes / reshapes / slices /
concatenations, so a load -> save round trip is bit-exact.

Layouts:
- `molmo`: the released Molmo hub checkpoints (`model.transformer.*`, `model.vision_backbone.*`).
- `molmoe_repo` / `molmoe_hub`: MolmoE-1B with the repo's fused expert tensors or the hub's
  per-expert modules (golden README §7.1).
- `hf_qwen2`, `hf_olmo2`, `hf_olmoe` (decoder only) and `hf_clip` (vision only): the stage-1
  backbone sources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from molmo_jax.model.config import LLMConfig, MolmoConfig, VisionConfig

Arrays = list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]
    ours: tuple[str, ...]
    to_ours: Callable[[Arrays], Arrays]
    to_hf: Callable[[Arrays], Arrays]


def same(hf: str, ours: str, shape: Sequence[int]) -> Rule:
    return Rule((hf,), (tuple(shape),), (ours,), lambda a: [a[0]], lambda a: [a[0]])


def linear(hf: str, ours: str, out_dim: int, in_dim: int) -> Rule:
    """PyTorch Linear weight `[out, in]` <-> kernel `[in, out]`."""
    return Rule((hf,), ((out_dim, in_dim),), (ours,), lambda a: [a[0].T], lambda a: [a[0].T])


def heads_out(hf: str, ours: str, d: int, heads: int, head_dim: int) -> Rule:
    """Attention output `[d, heads*hd]` <-> `[heads, hd, d]`."""
    return Rule(
        (hf,),
        ((d, heads * head_dim),),
        (ours,),
        lambda a: [a[0].T.reshape(heads, head_dim, d)],
        lambda a: [a[0].reshape(heads * head_dim, d).T],
    )


def heads_in(
    hf: Sequence[str], ours: Sequence[str], d: int, heads: Sequence[int], head_dim: int, bias: bool = False
) -> Rule:
    """Projections to heads. `hf` is one fused tensor `[sum(heads)*hd, d]` (rows q, k, v) or one tensor
    per output; ours are `[d, heads_i, hd]` kernels or `[heads_i, hd]` biases."""
    sizes = [n * head_dim for n in heads]
    cuts = np.cumsum(sizes)[:-1]

    def to_ours(a: Arrays) -> Arrays:
        parts = np.split(a[0], cuts, axis=0) if len(hf) == 1 else a
        if bias:
            return [p.reshape(n, head_dim) for p, n in zip(parts, heads)]
        return [p.T.reshape(d, n, head_dim) for p, n in zip(parts, heads)]

    def to_hf(a: Arrays) -> Arrays:
        parts = [p.reshape(-1) if bias else p.reshape(d, -1).T for p in a]
        return [np.concatenate(parts, axis=0)] if len(hf) == 1 else parts

    if len(hf) == 1:
        shapes = ((sum(sizes),),) if bias else ((sum(sizes), d),)
    else:
        shapes = tuple((s,) if bias else (s, d) for s in sizes)
    return Rule(tuple(hf), shapes, tuple(ours), to_ours, to_hf)


def fused_up_gate(hf: str, up: str, gate: str, hidden: int, d: int) -> Rule:
    """`ff_proj` `[2F, d]` with rows [up; gate] <-> up, gate kernels `[d, F]`."""
    return Rule(
        (hf,),
        ((2 * hidden, d),),
        (up, gate),
        lambda a: [a[0][:hidden].T, a[0][hidden:].T],
        lambda a: [np.concatenate([a[0].T, a[1].T], axis=0)],
    )


def stacked_experts(hf: str, ours: str, experts: int, hidden: int, d: int, transposed: bool) -> Rule:
    """Repo layout `[E*F, d]`: rows e*F:(e+1)*F hold expert e's `[F, d]` weight (w1/v1, ours
    `[E, d, F]`) or, `transposed`, its down-projection already as `[F, d]` (w2, ours `[E, F, d]`)."""
    if transposed:
        return Rule(
            (hf,),
            ((experts * hidden, d),),
            (ours,),
            lambda a: [a[0].reshape(experts, hidden, d)],
            lambda a: [a[0].reshape(experts * hidden, d)],
        )
    return Rule(
        (hf,),
        ((experts * hidden, d),),
        (ours,),
        lambda a: [a[0].reshape(experts, hidden, d).transpose(0, 2, 1)],
        lambda a: [a[0].transpose(0, 2, 1).reshape(experts * hidden, d)],
    )


def per_expert(hf: Sequence[str], ours: str, out_dim: int, in_dim: int) -> Rule:
    """One Linear weight `[out, in]` per expert <-> stacked kernels `[E, in, out]`."""
    return Rule(
        tuple(hf),
        tuple((out_dim, in_dim) for _ in hf),
        (ours,),
        lambda a: [np.stack([w.T for w in a])],
        lambda a: [w.T for w in a[0]],
    )


# --------------------------------------------------------------------------------------------------
# Tables


def vision_rules(v: VisionConfig, hf_prefix: str, ours: str = "vision") -> list[Rule]:
    """Molmo's ViT names (`image_vit.*`)."""
    p, w = hf_prefix, v.width
    inner = v.num_heads * v.head_dim
    n_pos = v.pos_grid[0] * v.pos_grid[1] + int(v.use_cls_token)
    rules = [
        linear(f"{p}patch_embedding.weight", f"{ours}.patch_embedding.kernel", w, v.patch_dim),
        same(f"{p}positional_embedding", f"{ours}.positional_embedding", (n_pos, w)),
    ]
    if v.patch_bias:
        rules.append(same(f"{p}patch_embedding.bias", f"{ours}.patch_embedding.bias", (w,)))
    if v.use_cls_token:
        rules.append(same(f"{p}class_embedding", f"{ours}.class_embedding", (w,)))
    if v.use_pre_norm:
        rules += [
            same(f"{p}pre_ln.weight", f"{ours}.pre_ln.scale", (w,)),
            same(f"{p}pre_ln.bias", f"{ours}.pre_ln.bias", (w,)),
        ]
    for i in range(v.num_layers):
        hb, ob = f"{p}transformer.resblocks.{i}.", f"{ours}.blocks.{i}."
        for n in ("wq", "wk", "wv"):
            rules += [
                linear(f"{hb}attention.{n}.weight", f"{ob}attention.{n}.kernel", inner, w),
                same(f"{hb}attention.{n}.bias", f"{ob}attention.{n}.bias", (inner,)),
            ]
        rules += [
            linear(f"{hb}attention.wo.weight", f"{ob}attention.wo.kernel", w, inner),
            same(f"{hb}attention.wo.bias", f"{ob}attention.wo.bias", (w,)),
            linear(f"{hb}feed_forward.w1.weight", f"{ob}mlp.w1.kernel", v.mlp_dim, w),
            same(f"{hb}feed_forward.w1.bias", f"{ob}mlp.w1.bias", (v.mlp_dim,)),
            linear(f"{hb}feed_forward.w2.weight", f"{ob}mlp.w2.kernel", w, v.mlp_dim),
            same(f"{hb}feed_forward.w2.bias", f"{ob}mlp.w2.bias", (w,)),
        ]
        if v.layer_scale:
            rules += [same(f"{hb}ls1.gamma", f"{ob}ls1", (w,)), same(f"{hb}ls2.gamma", f"{ob}ls2", (w,))]
        for hn, on in (("attention_norm", "attention_norm"), ("ffn_norm", "ffn_norm")):
            rules += [
                same(f"{hb}{hn}.weight", f"{ob}{on}.scale", (w,)),
                same(f"{hb}{hn}.bias", f"{ob}{on}.bias", (w,)),
            ]
    return rules


def connector_rules(c: MolmoConfig, hf_prefix: str) -> list[Rule]:
    p, v, con = hf_prefix, c.vision, c.connector
    feat = v.width * len(con.vit_layers)
    inner = v.num_heads * v.head_dim
    rules = []
    if con.padding_embed == "pad_and_partial_pad":
        rules.append(same(f"{p}pad_embed", "connector.pad_embed", (2, feat)))
    elif con.padding_embed in ("pad_embed", "regress"):
        rules.append(same(f"{p}pad_embed", "connector.pad_embed", (feat,)))
    for n in ("wq", "wk", "wv"):
        rules += [
            linear(f"{p}image_pooling_2d.{n}.weight", f"connector.image_pooling_2d.{n}.kernel", inner, feat),
            same(f"{p}image_pooling_2d.{n}.bias", f"connector.image_pooling_2d.{n}.bias", (inner,)),
        ]
    rules += [
        linear(f"{p}image_pooling_2d.wo.weight", "connector.image_pooling_2d.wo.kernel", v.width, inner),
        same(f"{p}image_pooling_2d.wo.bias", "connector.image_pooling_2d.wo.bias", (v.width,)),
        linear(
            f"{p}image_projector.w1.weight",
            "connector.image_projector.w1.kernel",
            con.projector_hidden,
            v.width,
        ),
        linear(
            f"{p}image_projector.w3.weight",
            "connector.image_projector.w3.kernel",
            con.projector_hidden,
            v.width,
        ),
        linear(
            f"{p}image_projector.w2.weight",
            "connector.image_projector.w2.kernel",
            c.llm.d_model,
            con.projector_hidden,
        ),
    ]
    return rules


def molmo_llm_rules(llm: LLMConfig, hf_prefix: str, layout: str) -> list[Rule]:
    """Decoder names of the Molmo checkpoints. `layout`: molmo | molmoe_repo | molmoe_hub."""
    p, d, h = hf_prefix, llm.d_model, llm.head_dim
    n, k = llm.num_heads, llm.num_kv_heads
    rules = [
        same(f"{p}wte.embedding", "llm.embedding", (llm.embedding_size, d)),
        same(f"{p}wte.new_embedding", "llm.new_embedding", (llm.additional_vocab_size, d)),
        same(f"{p}ln_f.weight", "llm.ln_f.scale", (d,)),
    ]
    head_name = "lm_head.weight" if layout == "molmoe_hub" else f"{p}ff_out.weight"
    rules.append(linear(head_name, "llm.lm_head", llm.embedding_size, d))
    for i in range(llm.num_layers):
        hb, ob = f"{p}blocks.{i}.", f"llm.blocks.{i}."
        ab = f"{hb}attn." if layout == "molmoe_hub" else hb  # hub MolmoE nests attention names
        qkv = (f"{ob}attn.q", f"{ob}attn.k", f"{ob}attn.v")
        rules += [
            heads_in([f"{ab}att_proj.weight"], qkv, d, (n, k, k), h),
            heads_out(f"{ab}attn_out.weight", f"{ob}attn.o", d, n, h),
            same(f"{ab}attn_norm.weight", f"{ob}attn_norm.scale", (d,)),
        ]
        if llm.qkv_bias:
            rules.append(
                heads_in([f"{ab}att_proj.bias"], tuple(q + "_bias" for q in qkv), d, (n, k, k), h, bias=True)
            )
        if llm.qk_norm:
            rules += [
                same(f"{ab}q_norm.weight", f"{ob}attn.q_norm.scale", (n * h,)),
                same(f"{ab}k_norm.weight", f"{ob}attn.k_norm.scale", (k * h,)),
            ]
        if not llm.is_moe:
            rules += [
                fused_up_gate(f"{hb}ff_proj.weight", f"{ob}mlp.up", f"{ob}mlp.gate", llm.mlp_hidden, d),
                linear(f"{hb}ff_out.weight", f"{ob}mlp.down", d, llm.mlp_hidden),
                same(f"{hb}ff_norm.weight", f"{ob}ff_norm.scale", (d,)),
            ]
            continue
        e, f = llm.moe_num_experts, llm.moe_hidden
        if layout == "molmoe_hub":
            mb = f"{hb}mlp."
            rules += [
                linear(f"{mb}gate.weight", f"{ob}mlp.router", e, d),
                same(f"{mb}ff_norm.weight", f"{ob}ff_norm.scale", (d,)),
                per_expert([f"{mb}experts.{j}.gate_proj.weight" for j in range(e)], f"{ob}mlp.gate", f, d),
                per_expert([f"{mb}experts.{j}.up_proj.weight" for j in range(e)], f"{ob}mlp.up", f, d),
                per_expert([f"{mb}experts.{j}.down_proj.weight" for j in range(e)], f"{ob}mlp.down", d, f),
            ]
        else:
            rules += [
                linear(f"{hb}ffn.router.layer.weight", f"{ob}mlp.router", e, d),
                same(f"{hb}ff_norm.weight", f"{ob}ff_norm.scale", (d,)),
                stacked_experts(f"{hb}ffn.experts.mlp.w1", f"{ob}mlp.gate", e, f, d, transposed=False),
                stacked_experts(f"{hb}ffn.experts.mlp.v1", f"{ob}mlp.up", e, f, d, transposed=False),
                stacked_experts(f"{hb}ffn.experts.mlp.w2", f"{ob}mlp.down", e, f, d, transposed=True),
            ]
    return rules


def molmo_rules(config: MolmoConfig, layout: str = "molmo") -> list[Rule]:
    """All tensors of a released Molmo checkpoint (hub names, prefix `model.`)."""
    if layout not in ("molmo", "molmoe_repo", "molmoe_hub"):
        raise ValueError(f"unknown Molmo checkpoint layout {layout!r}")
    if config.llm.is_moe and layout == "molmo":
        layout = "molmoe_repo"
    return (
        vision_rules(config.vision, "model.vision_backbone.image_vit.")
        + connector_rules(config, "model.vision_backbone.")
        + molmo_llm_rules(config.llm, "model.transformer.", layout)
    )


def hf_decoder_rules(llm: LLMConfig, family: str) -> list[Rule]:
    """Hugging Face `Qwen2ForCausalLM` / `Olmo2ForCausalLM` / `OlmoeForCausalLM` into our decoder
    (`llm.*`). `new_embedding` is not in these checkpoints."""
    d, h, n, k = llm.d_model, llm.head_dim, llm.num_heads, llm.num_kv_heads
    rules = [
        same("model.embed_tokens.weight", "llm.embedding", (llm.embedding_size, d)),
        same("model.norm.weight", "llm.ln_f.scale", (d,)),
        linear("lm_head.weight", "llm.lm_head", llm.embedding_size, d),
    ]
    for i in range(llm.num_layers):
        hb, ob = f"model.layers.{i}.", f"llm.blocks.{i}."
        names = [f"{hb}self_attn.{x}_proj.weight" for x in "qkv"]
        qkv = (f"{ob}attn.q", f"{ob}attn.k", f"{ob}attn.v")
        rules += [
            heads_in(names, qkv, d, (n, k, k), h),
            heads_out(f"{hb}self_attn.o_proj.weight", f"{ob}attn.o", d, n, h),
        ]
        if llm.qkv_bias:
            rules.append(
                heads_in(
                    [f"{hb}self_attn.{x}_proj.bias" for x in "qkv"],
                    tuple(q + "_bias" for q in qkv),
                    d,
                    (n, k, k),
                    h,
                    bias=True,
                )
            )
        if llm.qk_norm:
            rules += [
                same(f"{hb}self_attn.q_norm.weight", f"{ob}attn.q_norm.scale", (n * h,)),
                same(f"{hb}self_attn.k_norm.weight", f"{ob}attn.k_norm.scale", (k * h,)),
            ]
        if family == "olmo2":  # norm-after: the post-attention / post-feedforward norms
            norms = ("post_attention_layernorm", "post_feedforward_layernorm")
        else:
            norms = ("input_layernorm", "post_attention_layernorm")
        rules += [
            same(f"{hb}{norms[0]}.weight", f"{ob}attn_norm.scale", (d,)),
            same(f"{hb}{norms[1]}.weight", f"{ob}ff_norm.scale", (d,)),
        ]
        if family == "olmoe":
            e, f = llm.moe_num_experts, llm.moe_hidden
            mb = f"{hb}mlp."
            rules += [
                linear(f"{mb}gate.weight", f"{ob}mlp.router", e, d),
                per_expert([f"{mb}experts.{j}.gate_proj.weight" for j in range(e)], f"{ob}mlp.gate", f, d),
                per_expert([f"{mb}experts.{j}.up_proj.weight" for j in range(e)], f"{ob}mlp.up", f, d),
                per_expert([f"{mb}experts.{j}.down_proj.weight" for j in range(e)], f"{ob}mlp.down", d, f),
            ]
        else:
            f = llm.mlp_hidden
            rules += [
                linear(f"{hb}mlp.gate_proj.weight", f"{ob}mlp.gate", f, d),
                linear(f"{hb}mlp.up_proj.weight", f"{ob}mlp.up", f, d),
                linear(f"{hb}mlp.down_proj.weight", f"{ob}mlp.down", d, f),
            ]
    return rules


def detect_molmo_layout(names: set[str]) -> str:
    """Which Molmo layout a set of checkpoint tensor names follows."""
    if any(".ffn.router.layer.weight" in n for n in names):
        return "molmoe_repo"
    if any(".mlp.experts.0.gate_proj.weight" in n for n in names):
        return "molmoe_hub"
    return "molmo"
