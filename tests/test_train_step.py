"""The training step: loss definition, accumulation, optimiser groups, and mesh equivalence."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from molmo_jax.model.config import tiny
from molmo_jax.model.molmo import Molmo
from molmo_jax.model.sharding import logical_to_spec, make_mesh, state_shardings
from molmo_jax.train.optimizer import GroupSettings, OptimizerSettings, build_optimizer, group_of, schedule
from molmo_jax.train.step import StepSettings, make_train_step


def _batch(config, batch=8, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    vis = config.vision
    n_feat = (vis.grid[0] // 2) * (vis.grid[1] // 2)
    t = 1 + n_feat + 20
    ids = rng.integers(0, config.llm.vocab_size, (batch, t))
    ids[:, 1 : 1 + n_feat] = config.llm.embedding_size + 2  # image patch token: an additional embedding row
    targets = np.concatenate([ids[:, 1:], rng.integers(0, config.llm.vocab_size, (batch, 1))], axis=1)
    loss_masks = np.zeros((batch, t), np.float32)
    for b in range(batch):
        start = 1 + n_feat + rng.integers(2, 10)
        loss_masks[b, start:] = rng.choice([1.0, 0.5])
        ids[b, t - rng.integers(0, 4) :] = -1  # right padding
    loss_masks[ids == -1] = 0
    return {
        "input_ids": ids,
        "target_tokens": targets,
        "loss_masks": loss_masks,
        "images": rng.normal(size=(batch, 1, vis.num_patches, vis.patch_dim)).astype(np.float32),
        "image_masks": rng.choice(np.float32([0.0, 0.5, 1.0]), size=(batch, 1, vis.num_patches)),
        "image_input_idx": np.broadcast_to(np.arange(1, n_feat + 1), (batch, 1, n_feat)).copy(),
    }


def _setup(family="qwen2", accum=1, budget=None):
    config = tiny(family)
    model = Molmo(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    settings = OptimizerSettings(
        groups={g: GroupSettings(1e-3, 2) for g in ("connector", "vit", "llm")}, total_steps=10
    )
    tx = build_optimizer(settings, params)
    step = make_train_step(graphdef, tx, StepSettings(grad_accum_steps=accum, loss_budget=budget))
    return config, model, graphdef, params, tx, step


def _reference_loss(model, batch, z=1e-4):
    """Full-logit masked cross-entropy + z-loss, written out directly."""
    out = model(
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["images"]),
        jnp.asarray(batch["image_masks"]),
        jnp.asarray(batch["image_input_idx"]),
    ).logits
    logp = jax.nn.log_softmax(out, axis=-1)
    w = jnp.asarray(batch["loss_masks"])
    targets = jnp.where(w > 0, jnp.asarray(batch["target_tokens"]), 0)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    lse2 = jnp.square(jax.nn.logsumexp(out, axis=-1))
    return float(jnp.sum((nll + z * lse2) * w) / jnp.sum(w))


@pytest.mark.slow  # three jitted steps of the tiny model: ~45 s on 2 cores
def test_loss_matches_full_logit_definition_and_budget():
    config, model, _, params, tx, step = _setup()
    batch = _batch(config)
    _, _, metrics = jax.jit(step)(params, tx.init(params), batch)
    expected = _reference_loss(model, batch)
    assert abs(float(metrics["loss"]) - expected) < 1e-5
    assert int(metrics["loss_tokens_dropped"]) == 0
    *_, budget_step = _setup(budget=25)
    _, _, m2 = jax.jit(budget_step)(params, tx.init(params), batch)
    assert abs(float(m2["loss"]) - expected) < 1e-5  # 25 >= the longest answer: same loss
    *_, small = _setup(budget=4)
    _, _, m3 = jax.jit(small)(params, tx.init(params), batch)
    assert int(m3["loss_tokens_dropped"]) > 0  # a too-small budget is reported, not hidden


@pytest.mark.slow  # ~25 s on 2 cores
def test_grad_accumulation_equals_one_big_batch():
    config, _, _, params, tx, step1 = _setup(accum=1)
    *_, step4 = _setup(accum=4)
    batch = _batch(config)
    p1, _, m1 = jax.jit(step1)(params, tx.init(params), batch)
    p4, _, m4 = jax.jit(step4)(params, tx.init(params), batch)
    assert abs(float(m1["loss"]) - float(m4["loss"])) < 1e-5
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_groups_and_frozen_embedding():
    config, _, _, params, tx, step = _setup()
    new, _, metrics = jax.jit(step)(params, tx.init(params), _batch(config))
    flat_old = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(params)}
    flat_new = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(new)}
    assert np.array_equal(flat_old["llm.embedding"], flat_new["llm.embedding"])  # frozen, as the original
    for path in ("llm.lm_head", "llm.new_embedding", "vision.blocks.0.mlp.w1.kernel", "connector.pad_embed"):
        assert not np.array_equal(flat_old[path], flat_new[path]), path
    assert {"grad_norm/vit", "grad_norm/connector", "grad_norm/llm"} <= set(metrics)
    assert group_of("llm.new_embedding") == "connector" and group_of("vision.pre_ln.scale") == "vit"
    with pytest.raises(ValueError, match="no optimiser group"):
        group_of("other.weight")


def test_schedule_matches_the_original():
    lr = schedule(2e-4, 200, 1000)
    assert float(lr(jnp.asarray(0))) == pytest.approx(2e-4 / 200)  # first update: s = 1
    assert float(lr(jnp.asarray(199))) == pytest.approx(2e-4)
    assert float(lr(jnp.asarray(599))) == pytest.approx(2e-4 * (0.1 + 0.9 * 0.5))
    assert float(lr(jnp.asarray(5000))) == pytest.approx(2e-5)


def _sharded_step(config, graphdef, params, tx, batch, mesh):
    step = make_train_step(graphdef, tx, StepSettings(), mesh=mesh)
    p_sh = state_shardings(params, mesh)
    opt_state = tx.init(params)
    params = jax.device_put(params, p_sh)
    opt_state = jax.device_put(
        opt_state, jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), opt_state)
    )
    batch_spec = logical_to_spec(("batch",), mesh=mesh)
    data = {
        k: jax.device_put(v, NamedSharding(mesh, PartitionSpec(*batch_spec, *([None] * (np.ndim(v) - 1)))))
        for k, v in batch.items()
    }
    fn = jax.jit(step, out_shardings=(p_sh, None, None), donate_argnums=(0,))
    return fn(params, opt_state, data)


@pytest.mark.parametrize(
    "family,shape",
    [
        pytest.param("qwen2", {"data": 8}, marks=pytest.mark.slow),
        pytest.param("qwen2", {"fsdp": 8}, marks=pytest.mark.slow),
        ("qwen2", {"data": 2, "fsdp": 2, "tensor": 2}),
        pytest.param("olmoe", {"expert": 4, "data": 2}, marks=pytest.mark.slow),
    ],
)
def test_sharded_step_equals_single_device(family, shape):
    config, _, graphdef, params, tx, step = _setup(family)
    if family == "olmoe":
        config = dataclasses.replace(config, llm=dataclasses.replace(config.llm, moe_impl="dense"))
        model = Molmo(config, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model, nnx.Param)
        tx = build_optimizer(
            OptimizerSettings(
                groups={g: GroupSettings(1e-3, 2) for g in ("connector", "vit", "llm")}, total_steps=10
            ),
            params,
        )
        step = make_train_step(graphdef, tx, StepSettings())
    batch = _batch(config)
    p1, _, m1 = jax.jit(step)(params, tx.init(params), batch)
    mesh = make_mesh(shape)
    p2, _, m2 = _sharded_step(config, graphdef, params, tx, batch, mesh)
    assert abs(float(m1["loss"]) - float(m2["loss"])) < 1e-5
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-6)


@pytest.mark.slow  # ~17 s: two compiled steps of a full model
def test_remat_gives_the_same_step():
    config = tiny()
    batch = _batch(config)
    results = []
    for remat in ((), ("vit", "llm")):
        cfg = config.replace(remat=remat)
        graphdef, params = nnx.split(Molmo(cfg, rngs=nnx.Rngs(0)), nnx.Param)
        settings = OptimizerSettings(
            groups={g: GroupSettings(1e-3, 2) for g in ("connector", "vit", "llm")}, total_steps=10
        )
        tx = build_optimizer(settings, params)
        results.append(jax.jit(make_train_step(graphdef, tx, StepSettings()))(params, tx.init(params), batch))
    (p1, _, m1), (p2, _, m2) = results
    assert abs(float(m1["loss"]) - float(m2["loss"])) < 1e-6
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
