"""Training-only regularisation: response residual dropout and the MoE auxiliary losses."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train_step import _batch

from molmo_jax.model.config import ConfigError, LLMConfig, tiny
from molmo_jax.model.llm import dropout_keep_prob, residual_dropout
from molmo_jax.model.molmo import Molmo
from molmo_jax.train.optimizer import GroupSettings, OptimizerSettings, build_optimizer
from molmo_jax.train.step import StepSettings, make_train_step, microbatch_loss


def _step(config, **settings):
    model = Molmo(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    opt = OptimizerSettings(
        groups={g: GroupSettings(1e-3, 2) for g in ("connector", "vit", "llm")}, total_steps=10
    )
    tx = build_optimizer(opt, params)
    return model, params, tx, jax.jit(make_train_step(graphdef, tx, StepSettings(**settings)))


def _with_dropout(config, rate=0.0, response_rate=0.0):
    return config.replace(
        llm=dataclasses.replace(config.llm, residual_dropout=rate, response_residual_dropout=response_rate)
    )


def _loss(step, params, tx, batch, index=0) -> float:
    return float(step(params, tx.init(params), batch, index)[2]["loss"])


def test_keep_rates_match_response_dropout_semantics():
    b, t, d = 4, 512, 64
    response = jax.random.bernoulli(jax.random.key(1), 0.5, (b, t))
    y = jnp.ones((b, t, d), jnp.float32)
    for rate, response_rate in [(0.1, 0.0), (0.0, 0.1), (0.2, 0.4)]:
        keep = dropout_keep_prob((b, t), rate, response_rate, response)
        out = np.asarray(residual_dropout(y, keep, jax.random.key(7)))
        kept = out != 0
        resp = np.asarray(response)
        want_resp = 1 - (response_rate if response_rate > 0 else rate)
        assert abs(kept[resp].mean() - want_resp) < 0.01, (rate, response_rate)
        assert abs(kept[~resp].mean() - (1 - rate)) < 0.01, (rate, response_rate)
        # inverted scaling: kept entries are 1 / keep, so the expectation is unchanged
        np.testing.assert_allclose(
            out[kept], np.broadcast_to(1 / np.asarray(keep)[..., None], out.shape)[kept]
        )
    with pytest.raises(ValueError, match="response mask"):
        dropout_keep_prob((b, t), 0.0, 0.1, None)
    with pytest.raises(ConfigError, match="llm.residual_dropout=1.0"):
        LLMConfig(residual_dropout=1.0)


def _forward_loss(config, params, batch, rng=None, **settings) -> dict:
    """The micro-batch loss alone (no gradients: cheaper to compile than a whole step)."""
    graphdef = nnx.graphdef(Molmo(config, rngs=nnx.Rngs(0)))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    norm = jnp.sum(batch["loss_masks"])
    fn = jax.jit(lambda p, r: microbatch_loss(graphdef, p, batch, StepSettings(**settings), norm, r))
    loss, metrics = fn(params, rng)
    return dict(metrics, loss=loss)


@pytest.mark.slow  # ~19 s: four compiled steps
def test_dropout_changes_the_train_loss_deterministically_per_step():
    config = tiny()
    batch = _batch(config)
    model, params, tx, _ = _step(config)
    base = float(_forward_loss(config, params, batch)["loss"])
    # rates of 0: the deterministic model, with or without a dropout rng
    assert float(_forward_loss(config, params, batch, jax.random.key(5))["loss"]) == base
    residual = float(_forward_loss(_with_dropout(config, 0.1, 0.0), params, batch, jax.random.key(5))["loss"])
    assert residual != base
    # the whole step (here with accumulation): masks from (seed, step index, micro-batch)
    _, _, _, step = _step(_with_dropout(config, 0.0, 0.1), seed=3, grad_accum_steps=2)
    at0 = _loss(step, params, tx, batch, 0)
    assert np.isfinite(at0) and abs(at0 - base) > 1e-6
    assert _loss(step, params, tx, batch, 0) == at0  # same step, same masks (exact resume)
    assert _loss(step, params, tx, batch, 1) != at0  # the next step draws new masks
    # evaluation / generation never drops, whatever the config says
    dropped = Molmo(_with_dropout(config, 0.5, 0.5), rngs=nnx.Rngs(0))
    ids = jnp.asarray(batch["input_ids"])
    np.testing.assert_array_equal(np.asarray(dropped(ids).logits), np.asarray(model(ids).logits))


def _numpy_aux(logits: np.ndarray, k: int, valid: np.ndarray) -> tuple[float, float]:
    """Megablocks' load-balancing loss and router z-loss written out with loops."""
    n_layers, _, _, e = logits.shape
    lb, z = 0.0, 0.0
    toks = valid.reshape(-1)
    n = toks.sum()
    for layer in range(n_layers):
        lg = logits[layer].reshape(-1, e)[toks].astype(np.float64)
        p = np.exp(lg - lg.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        top = np.argsort(-p, axis=-1, kind="stable")[:, :k]
        counts = np.bincount(top.reshape(-1), minlength=e)
        lb += float(counts @ p.mean(0))
        lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
        z += float(np.mean(lse**2))
    return e / (n_layers * n * k) * lb, z / n_layers


@pytest.mark.slow  # ~30 s on 2 cores
def test_moe_aux_losses_match_numpy_and_enter_the_loss():
    config = tiny("olmoe")
    batch = _batch(config)
    model, params, tx, _ = _step(config)
    ids = jnp.asarray(batch["input_ids"])
    kw = {k: jnp.asarray(batch[k]) for k in ("images", "image_masks", "image_input_idx")}
    out = model(ids, **kw, return_intermediates=True)
    lb, rz = _numpy_aux(np.asarray(out.extras["router_logits"]), config.llm.moe_top_k, np.asarray(ids != -1))
    assert abs(float(out.aux_losses["load_balance"]) - lb) < 1e-5 * max(1, lb)
    assert abs(float(out.aux_losses["router_z"]) - rz) < 1e-5 * max(1, rz)

    m0 = _forward_loss(config, params, batch)
    expected_ce = float(m0["cross_entropy"]) + 1e-4 * float(m0["z_loss"])
    assert abs(float(m0["loss"]) - expected_ce) < 1e-6  # weights 0: the loss is the LM loss alone
    assert abs(float(m0["moe_load_balance"]) - lb) < 1e-4 and abs(float(m0["moe_router_z"]) - rz) < 1e-4
    m1 = _forward_loss(config, params, batch, moe_load_balance_weight=0.01, moe_router_z_weight=0.001)
    assert abs(float(m1["loss"]) - (float(m0["loss"]) + 0.01 * lb + 0.001 * rz)) < 1e-5
    # a whole step logs them; accumulation averages the micro-batch values
    _, _, _, accum = _step(config, grad_accum_steps=2, moe_load_balance_weight=0.01)
    m2 = accum(params, tx.init(params), batch)[2]
    assert abs(float(m2["moe_load_balance"]) - lb) < 0.05 * lb
