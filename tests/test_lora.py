"""LoRA: parameter count, frozen base, merge equivalence, zero-init, fine-tuning, checkpoints, CLI."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from molmo_jax.checkpoints.hf import load_pretrained, save_pretrained
from molmo_jax.model.config import tiny
from molmo_jax.model.molmo import Molmo
from molmo_jax.train import lora
from molmo_jax.train.step import StepSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(config, batch=4, seed=0) -> dict:
    """Synthetic pointing-style batches: image tokens, a prompt, and a fixed-format answer."""
    rng = np.random.default_rng(seed)
    vis = config.vision
    n_feat = (vis.grid[0] // 2) * (vis.grid[1] // 2)
    answer = np.array([7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47])  # '<point x="..." ...>' stand-in
    t = 1 + n_feat + 6 + len(answer)
    ids = rng.integers(0, config.llm.vocab_size, (batch, t))
    ids[:, 1 : 1 + n_feat] = config.llm.embedding_size + 2
    ids[:, 1 + n_feat + 6 :] = answer
    targets = np.concatenate([ids[:, 1:], np.full((batch, 1), 1)], axis=1)
    loss_masks = np.zeros((batch, t), np.float32)
    loss_masks[:, 1 + n_feat + 5 :] = 1.0
    return {
        "input_ids": ids,
        "target_tokens": targets,
        "loss_masks": loss_masks,
        "images": rng.normal(size=(batch, 1, vis.num_patches, vis.patch_dim)).astype(np.float32),
        "image_masks": np.ones((batch, 1, vis.num_patches), np.float32),
        "image_input_idx": np.broadcast_to(np.arange(1, n_feat + 1), (batch, 1, n_feat)).copy(),
    }


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, batch):
    model = nnx.merge(graphdef, params)
    keys = ("images", "image_masks", "image_input_idx")
    return model(batch["input_ids"], **{k: batch[k] for k in keys}).logits


def _logits(graphdef, params, batch):
    return _forward(graphdef, params, {k: jnp.asarray(v) for k, v in batch.items()})


@pytest.fixture(scope="module")
def setup():
    config = tiny()
    model = Molmo(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    return config, model, graphdef, params


def _random_b(adapters, seed=3):
    key = jax.random.key(seed)
    return {
        n: {"a": ab["a"], "b": 0.05 * jax.random.normal(jax.random.fold_in(key, i), ab["b"].shape)}
        for i, (n, ab) in enumerate(adapters.items())
    }


@pytest.mark.parametrize("rank", [1, 4])
def test_trainable_count_equals_formula(setup, rank):
    _, _, _, params = setup
    cfg = lora.LoRAConfig(rank=rank, targets=lora.ALL_LINEAR_TARGETS)
    adapters = lora.init_adapters(params, cfg, jax.random.key(0))
    shapes = {".".join(map(str, p)): v.get_value().shape for p, v in nnx.to_flat_state(params)}
    expected = 0
    for name in adapters:
        s = shapes[name]
        n_in = s[0] * s[1] if name.endswith("attn.o") else s[0]
        expected += rank * (n_in + int(np.prod(s)) // n_in)
    assert lora.count_params(adapters) == expected == lora.expected_num_params(params, cfg)
    assert "llm.blocks.0.attn.o" in adapters and adapters["llm.blocks.0.attn.o"]["a"].shape == (4 * 14, rank)
    assert "vision.blocks.0.attention.wq.kernel" in adapters
    assert not any(n.endswith("bias") for n in adapters)


def test_zero_init_equals_base(setup):
    config, _, graphdef, params = setup
    cfg = lora.LoRAConfig(rank=4, targets=lora.ALL_LINEAR_TARGETS)
    adapters = lora.init_adapters(params, cfg, jax.random.key(0))
    assert all(not np.any(np.asarray(ab["b"])) for ab in adapters.values())
    batch = _batch(config, batch=2)
    base = _logits(graphdef, params, batch)
    adapted = _logits(graphdef, lora.apply_adapters(params, adapters, cfg), batch)
    np.testing.assert_array_equal(np.asarray(base), np.asarray(adapted))


def test_step_updates_only_adapters_and_fine_tune_lowers_loss(setup):
    config, _, graphdef, params = setup
    cfg = lora.LoRAConfig(rank=4, alpha=16.0, dropout=0.05, targets=lora.DEFAULT_TARGETS + (r"llm\.lm_head",))
    adapters = lora.init_adapters(params, cfg, jax.random.key(0))
    tx = lora.build_lora_optimizer(1e-2, total_steps=20, warmup_steps=2)
    step = jax.jit(lora.make_lora_train_step(graphdef, tx, StepSettings(), cfg))
    before = jax.tree.map(lambda x: np.array(x), params)
    opt_state = tx.init(adapters)
    batch = _batch(config, batch=4)
    losses = []
    a0 = jax.tree.map(np.asarray, adapters)
    for i in range(20):
        adapters, opt_state, metrics = step(adapters, opt_state, params, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    for (p, old), (_, new) in zip(nnx.to_flat_state(before), nnx.to_flat_state(params)):
        assert np.array_equal(old.get_value(), np.asarray(new.get_value())), p  # base bitwise unchanged
    for name, ab in adapters.items():
        assert not np.array_equal(a0[name]["b"], np.asarray(ab["b"])), name
    assert min(losses[-3:]) < 0.6 * losses[0], losses  # ~6.2 -> ~2


def test_grad_accumulation_matches(setup):
    config, _, graphdef, params = setup
    cfg = lora.LoRAConfig(rank=2)
    adapters = _random_b(lora.init_adapters(params, cfg, jax.random.key(0)))
    tx = lora.build_lora_optimizer(1e-3, total_steps=10)
    batch = _batch(config, batch=4)
    one = jax.jit(lora.make_lora_train_step(graphdef, tx, StepSettings(), cfg))
    two = jax.jit(lora.make_lora_train_step(graphdef, tx, StepSettings(grad_accum_steps=2), cfg))
    a1, _, m1 = one(adapters, tx.init(adapters), params, batch)
    a2, _, m2 = two(adapters, tx.init(adapters), params, batch)
    assert abs(float(m1["loss"]) - float(m2["loss"])) < 1e-5
    for x, y in zip(jax.tree.leaves(a1), jax.tree.leaves(a2)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-6)


def test_merged_model_equals_adapter_model_and_checkpoint_round_trip(setup, tmp_path):
    config, _, graphdef, params = setup
    cfg = lora.LoRAConfig(rank=4, alpha=16.0, targets=lora.ALL_LINEAR_TARGETS)
    adapters = _random_b(lora.init_adapters(params, cfg, jax.random.key(0)))
    batch = _batch(config, batch=2)
    adapted = np.asarray(_logits(graphdef, lora.apply_adapters(params, adapters, cfg), batch))
    base = np.asarray(_logits(graphdef, params, batch))
    assert np.max(np.abs(adapted - base)) > 1e-3  # the adapters do something

    lora.save_adapters(adapters, cfg, tmp_path / "adapters")
    loaded, cfg2 = lora.load_adapters(tmp_path / "adapters", params)
    assert cfg2 == cfg and set(loaded) == set(adapters)
    model = nnx.merge(graphdef, jax.tree.map(lambda x: x, params))  # new Variables: the fixture stays
    lora.merge_lora(model, loaded, cfg2)
    merged = np.asarray(_logits(*nnx.split(model, nnx.Param), batch))
    np.testing.assert_allclose(merged, adapted, rtol=0, atol=1e-5)
    size = (tmp_path / "adapters" / lora.ADAPTER_WEIGHTS).stat().st_size
    assert size < 4 * lora.count_params(adapters) + 20_000

    # merge_lora CLI: base checkpoint + adapters -> HF layout that load_pretrained reads
    save_pretrained(nnx.merge(graphdef, jax.tree.map(lambda x: x, params)), tmp_path / "base")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "molmo_jax.cli.merge_lora",
            "--base",
            str(tmp_path / "base"),
            "--adapters",
            str(tmp_path / "adapters"),
            "--out",
            str(tmp_path / "merged"),
        ],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
    )
    reloaded = load_pretrained(tmp_path / "merged")
    out = np.asarray(_logits(*nnx.split(reloaded, nnx.Param), batch))
    np.testing.assert_allclose(out, adapted, rtol=0, atol=1e-5)


def test_bad_patterns_raise_naming_the_pattern(setup):
    _, _, _, params = setup
    bad = r"llm\.blocks\.\d+\.attn\.qkv"
    with pytest.raises(lora.LoRAError, match=re.escape(bad)):
        lora.select_targets(params, lora.LoRAConfig(targets=(r"llm\.blocks\.\d+\.attn\.q", bad)))
    with pytest.raises(lora.LoRAError, match="< 2 dims"):
        lora.select_targets(params, lora.LoRAConfig(targets=(r"llm\.ln_f\.scale",)))
    with pytest.raises(lora.LoRAError, match="not a valid regex"):
        lora.LoRAConfig(targets=("llm.(",))
    with pytest.raises(lora.LoRAError, match="rank"):
        lora.LoRAConfig(rank=0)


def test_bf16_base(setup):
    config, _, graphdef, params = setup
    cfg = lora.LoRAConfig(rank=2)
    base16 = lora.cast_base(params, jnp.bfloat16)
    adapters = lora.init_adapters(params, cfg, jax.random.key(0))
    tx = lora.build_lora_optimizer(1e-2, total_steps=10)
    step = jax.jit(lora.make_lora_train_step(graphdef, tx, StepSettings(), cfg))
    new, _, m = step(adapters, tx.init(adapters), base16, _batch(config, batch=2))
    assert np.isfinite(float(m["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new))


@pytest.mark.slow
def test_sharded_lora_step_equals_single_device(setup):
    from molmo_jax.model.sharding import logical_to_spec, make_mesh, state_shardings

    config, _, graphdef, params = setup
    cfg = lora.LoRAConfig(rank=4, targets=lora.ALL_LINEAR_TARGETS)
    adapters = _random_b(lora.init_adapters(params, cfg, jax.random.key(0)))
    tx = lora.build_lora_optimizer(1e-3, total_steps=10)
    batch = _batch(config, batch=4)
    a1, _, m1 = jax.jit(lora.make_lora_train_step(graphdef, tx, StepSettings(), cfg))(
        adapters, tx.init(adapters), params, batch
    )
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    base = jax.device_put(params, state_shardings(params, mesh))
    a_sh = lora.replicated_shardings(adapters, mesh)
    opt_state = tx.init(adapters)
    spec = logical_to_spec(("batch",), mesh=mesh)
    data = {
        k: jax.device_put(v, NamedSharding(mesh, PartitionSpec(*spec, *([None] * (np.ndim(v) - 1)))))
        for k, v in batch.items()
    }
    step = jax.jit(
        lora.make_lora_train_step(graphdef, tx, StepSettings(), cfg, mesh), out_shardings=(a_sh, None, None)
    )
    a2, _, m2 = step(jax.device_put(adapters, a_sh), opt_state, base, data)
    assert abs(float(m1["loss"]) - float(m2["loss"])) < 1e-5
    for x, y in zip(jax.tree.leaves(a1), jax.tree.leaves(a2)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=5e-6)


def test_stacked_experts_get_one_adapter_each():
    params = nnx.split(nnx.eval_shape(lambda: Molmo(tiny("olmoe"), rngs=nnx.Rngs(0))), nnx.Param)[1]
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    cfg = lora.LoRAConfig(rank=2, alpha=4.0)
    adapters = _random_b(lora.init_adapters(params, cfg, jax.random.key(0)))
    e, d, f = params["llm"]["blocks"][0]["mlp"]["gate"].get_value().shape
    ab = adapters["llm.blocks.0.mlp.gate"]
    assert ab["a"].shape == (e, d, 2) and ab["b"].shape == (e, 2, f)
    assert lora.count_params(adapters) == lora.expected_num_params(params, cfg)
    merged = lora.apply_adapters(params, adapters, cfg)["llm"]["blocks"][0]["mlp"]["gate"].get_value()
    for x in range(e):
        np.testing.assert_allclose(merged[x], 2.0 * ab["a"][x] @ ab["b"][x], atol=1e-6)
