"""The decoder alone against Hugging Face Qwen2 / OLMo-2 / OLMoE outputs (golden README §6-7),
and the mixture of experts against an independent per-token loop and under expert sharding."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import golden_root, rel_err, require_golden
from flax import nnx
from safetensors.numpy import load_file

from molmo_jax.checkpoints.hf import TensorReader, load_tensors
from molmo_jax.checkpoints.naming import hf_decoder_rules
from molmo_jax.model.config import llm_from_hf_backbone
from molmo_jax.model.llm import CausalLM
from molmo_jax.model.moe import MoEFeedForward
from molmo_jax.model.sharding import make_mesh, state_shardings, use_mesh_rules

TOL = 1e-4
FAMILY = {"qwen2": "qwen2", "olmo2": "olmo2", "olmoe": "olmoe"}


def _backbones() -> list[str]:
    root = golden_root() / "backbones"
    if not root.exists():
        return ["<missing golden backbones folder>"]
    out = []
    for cfg in sorted(root.rglob("config.json")):
        if (cfg.parent / "case_0.npz").exists() and '"ForCausalLM' not in cfg.read_text():
            out.append(str(cfg.parent.relative_to(root)))
    return out


@functools.cache
def _load(name: str, impl: str = "ragged") -> CausalLM:
    folder = require_golden("backbones", name)
    cfg = dataclasses.replace(llm_from_hf_backbone(folder / "config.json"), moe_impl=impl)
    family = FAMILY[__import__("json").loads((folder / "config.json").read_text())["model_type"]]
    model = CausalLM(cfg, rngs=nnx.Rngs(0))
    return load_tensors(
        model,
        TensorReader.from_dir(folder),
        hf_decoder_rules(cfg, family),
        allow_missing=("llm.new_embedding",),
    )


def _cases(name: str):
    for case_file in sorted(require_golden("backbones", name).glob("case_*.npz")):
        case = dict(np.load(case_file))
        mask = case["attention_mask"].astype(bool)
        yield case_file.name, case, mask, np.where(mask, case["input_ids"], -1)


def _decoder_cases() -> list[tuple[str, str]]:
    """Every backbone with the default MoE kernel, and the MoE ones also with the dense kernel."""
    names = _backbones()
    return [(n, "ragged") for n in names] + [(n, "dense") for n in names if n.startswith("olmoe")]


@pytest.mark.golden
@pytest.mark.parametrize("name,impl", _decoder_cases())
def test_decoder_matches_hf(name: str, impl: str):
    model = _load(name, impl)
    for case_file, case, mask, ids in _cases(name):
        logits, inter = model(jnp.asarray(ids), return_intermediates=True)
        assert rel_err(np.asarray(logits)[mask], case["logits"][mask]) <= TOL, case_file
        assert rel_err(np.asarray(inter["hidden_states"])[:, mask], case["hidden_states"][:, mask]) <= TOL
        if "router_logits" in case:
            assert np.array_equal(np.asarray(inter["topk_idx"])[:, mask], case["router_topk_idx"][:, mask])
            for ours, ref in (
                ("router_logits", "router_logits"),
                ("topk_prob", "router_topk_prob"),
                ("moe_in", "moe_in"),
                ("moe_out", "moe_out"),
            ):
                assert rel_err(np.asarray(inter[ours])[:, mask], case[ref][:, mask]) <= TOL, ours


def _moe_backbones() -> list[str]:
    return [n for n in _backbones() if n.startswith("olmoe")] or ["<missing olmoe_tiny>"]


def _loop_reference(tensors: dict, layer: int, m: np.ndarray, top_k: int) -> np.ndarray:
    """Per-token loop over the selected experts, straight from the HF tensors (float64)."""
    pre = f"model.layers.{layer}.mlp."
    gate_w = tensors[pre + "gate.weight"].astype(np.float64)
    out = np.zeros_like(m, dtype=np.float64)
    for t, x in enumerate(m.astype(np.float64)):
        logits = gate_w @ x
        p = np.exp(logits - logits.max())
        p /= p.sum()
        for e in np.argsort(-p, kind="stable")[:top_k]:
            g = tensors[f"{pre}experts.{e}.gate_proj.weight"] @ x
            u = tensors[f"{pre}experts.{e}.up_proj.weight"] @ x
            h = g / (1 + np.exp(-g)) * u
            out[t] += p[e] * (tensors[f"{pre}experts.{e}.down_proj.weight"] @ h)
    return out


@pytest.mark.golden
@pytest.mark.parametrize("name", _moe_backbones())
@pytest.mark.parametrize("impl", ["ragged", "dense"])
def test_moe_equals_independent_loop(name: str, impl: str):
    folder = require_golden("backbones", name)
    tensors = load_file(str(folder / "model.safetensors"))
    model = _load(name, impl)
    cfg = model.llm.config
    case = dict(np.load(folder / "case_0.npz"))
    mask = case["attention_mask"].astype(bool)
    for layer in range(cfg.num_layers):
        moe_in = case["moe_in"][layer][mask]  # [tokens, d]
        ours, _ = model.llm.blocks[layer].mlp(jnp.asarray(moe_in)[None])
        ref = _loop_reference(tensors, layer, moe_in, cfg.moe_top_k)
        assert rel_err(np.asarray(ours)[0], ref) <= 1e-5


@pytest.mark.golden
@pytest.mark.parametrize("name", _moe_backbones())
def test_moe_expert_sharded_equals_single_device(name: str):
    if jax.device_count() < 4:
        pytest.fail("needs XLA_FLAGS=--xla_force_host_platform_device_count>=4 (set by conftest)")
    model = _load(name, "dense")
    case = dict(np.load(require_golden("backbones", name, "case_0.npz")))
    mask = case["attention_mask"].astype(bool)
    ids = jnp.asarray(np.where(mask, case["input_ids"], -1))
    expected, _ = model(ids)
    mesh = make_mesh({"expert": 4, "data": -1})
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh)
    state = jax.device_put(state, shardings)
    gate = state["llm"]["blocks"][0]["mlp"]["gate"][...]
    assert gate.sharding.spec[0] == "expert"  # the expert axis of the weights is really split
    assert len({s.device for s in gate.addressable_shards}) == 4 or len(gate.addressable_shards) == 8

    @jax.jit
    def forward(state, ids):
        with use_mesh_rules(mesh):
            return nnx.merge(graphdef, state)(ids)[0]

    got = forward(state, ids)
    assert rel_err(np.asarray(got)[mask], np.asarray(expected)[mask]) <= 1e-5


def test_moe_ragged_and_dense_agree_on_random_weights():
    from molmo_jax.model.config import tiny

    cfg = tiny("olmoe").llm
    x = jax.random.normal(jax.random.key(1), (2, 9, cfg.d_model))
    ragged = MoEFeedForward(dataclasses.replace(cfg, moe_impl="ragged"), rngs=nnx.Rngs(3))
    dense = MoEFeedForward(dataclasses.replace(cfg, moe_impl="dense"), rngs=nnx.Rngs(3))
    y1, a1 = ragged(x)
    y2, a2 = dense(x)
    assert np.array_equal(np.asarray(a1["topk_idx"]), np.asarray(a2["topk_idx"]))
    assert rel_err(y1, y2) <= 1e-5
    assert float(jnp.abs(y1).max()) > 0
