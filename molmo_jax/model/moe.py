"""OLMoE mixture-of-experts feed-forward (MolmoE-1B: 64 experts, top-8).

Routing: p = softmax(router(x)) in float32 over all experts, the top-k experts by p, their
probabilities used as weights WITHOUT renormalisation; each expert is a SwiGLU MLP
`down(silu(gate(x)) * up(x))`.

Two implementations of the same math, chosen by `LLMConfig.moe_impl`:
- `ragged`: tokens sorted by expert and run through `jax.lax.ragged_dot` (dropless, no wasted
  FLOPs; the default on one device).
- `dense`: every expert on every token, combined with the (mostly zero) routing weights, written
  as einsums over an `experts` axis, so sharding the expert weights over the `expert` mesh axis
  gives expert parallelism with one reduction; it costs num_experts / top_k times the FLOPs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from molmo_jax.model.config import LLMConfig
from molmo_jax.model.layers import kernel_init, param, shard


def route(router_logits: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
    """Top-k expert probabilities (softmax over all experts, float32, not renormalised) and indices."""
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    return jax.lax.top_k(probs, top_k)


def moe_aux_losses(
    router_logits: jax.Array, topk_idx: jax.Array, valid: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Unweighted auxiliary losses of a stack of MoE layers (megablocks' definitions), over tokens.

    router_logits `[L, B, T, E]`, topk_idx `[L, B, T, k]`, valid `[B, T]` (tokens that count;
    default all). With N counted tokens:
      load_balance = E / (L * N * k) * sum_{l,e} count_{l,e} * mean_prob_{l,e}
        (count: top-k assignments of expert e in layer l; mean_prob: its softmax probability
        averaged over the tokens; 1.0 for perfectly uniform routing),
      router_z = mean_l mean_tokens logsumexp(logits)^2.
    """
    n_layers, b, t, e = router_logits.shape
    k = topk_idx.shape[-1]
    w = jnp.ones((b, t), jnp.float32) if valid is None else valid.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    logits = router_logits.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    mean_prob = jnp.einsum("lbte,bt->le", probs, w) / n
    counts = jnp.einsum("lbtke,bt->le", jax.nn.one_hot(topk_idx, e, dtype=jnp.float32), w)
    load_balance = e / (n_layers * n * k) * jnp.sum(counts * mean_prob)
    lse = jax.nn.logsumexp(logits, axis=-1)
    router_z = jnp.einsum("lbt,bt->", jnp.square(lse), w) / (n * n_layers)
    return {"load_balance": load_balance, "router_z": router_z}


class MoEFeedForward(nnx.Module):
    def __init__(self, config: LLMConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        e, d, h = config.moe_num_experts, config.d_model, config.moe_hidden
        self.top_k, self.impl = config.moe_top_k, config.moe_impl
        init, out_init = kernel_init(config.init, d), kernel_init(config.init, h, config.num_layers)
        self.router = param(rngs, init, (d, e), ("embed", None), param_dtype)
        self.gate = param(rngs, init, (e, d, h), ("experts", "embed", "expert_mlp"), param_dtype)
        self.up = param(rngs, init, (e, d, h), ("experts", "embed", "expert_mlp"), param_dtype)
        self.down = param(rngs, out_init, (e, h, d), ("experts", "expert_mlp", "embed"), param_dtype)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """x `[B, T, d]` -> (y `[B, T, d]`, {router_logits, topk_prob, topk_idx})."""
        b, t, d = x.shape
        tokens = x.reshape(b * t, d)
        router_logits = tokens @ self.router[...].astype(x.dtype)
        topk_prob, topk_idx = route(router_logits, self.top_k)
        weights = topk_prob.astype(x.dtype)
        if self.impl == "ragged":
            y = self._ragged(tokens, topk_idx, weights)
        else:
            y = self._dense(tokens, topk_idx, weights)
        aux = {
            "router_logits": router_logits.reshape(b, t, -1),
            "topk_prob": topk_prob.reshape(b, t, -1),
            "topk_idx": topk_idx.reshape(b, t, -1),
        }
        return y.reshape(b, t, d), aux

    def _weights(self, dtype):
        return (self.gate[...].astype(dtype), self.up[...].astype(dtype), self.down[...].astype(dtype))

    def _ragged(self, tokens: jax.Array, topk_idx: jax.Array, weights: jax.Array) -> jax.Array:
        n, k = topk_idx.shape
        num_experts = self.gate[...].shape[0]
        flat_expert = topk_idx.reshape(-1)
        order = jnp.argsort(flat_expert, stable=True)
        token_of = order // k
        group_sizes = jnp.bincount(flat_expert, length=num_experts).astype(jnp.int32)
        gate, up, down = self._weights(tokens.dtype)
        xs = tokens[token_of]
        hidden = jax.nn.silu(jax.lax.ragged_dot(xs, gate, group_sizes)) * jax.lax.ragged_dot(
            xs, up, group_sizes
        )
        out = jax.lax.ragged_dot(hidden, down, group_sizes) * weights.reshape(-1)[order][:, None]
        return jnp.zeros_like(tokens).at[token_of].add(out)

    def _dense(self, tokens: jax.Array, topk_idx: jax.Array, weights: jax.Array) -> jax.Array:
        n = tokens.shape[0]
        num_experts = self.gate[...].shape[0]
        combine = jnp.zeros((n, num_experts), tokens.dtype).at[jnp.arange(n)[:, None], topk_idx].set(weights)
        combine = shard(combine, ("batch", "experts"))
        gate, up, down = self._weights(tokens.dtype)
        hidden = jax.nn.silu(jnp.einsum("nd,edh->neh", tokens, gate)) * jnp.einsum("nd,edh->neh", tokens, up)
        hidden = shard(hidden, ("batch", "experts", "expert_mlp"))
        return jnp.einsum("neh,ehd,ne->nd", hidden, down, combine)
