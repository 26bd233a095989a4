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
from molmo_jax.model.layers import normal_init, param, shard


def route(router_logits: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
    """Top-k expert probabilities (softmax over all experts, float32, not renormalised) and indices."""
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    return jax.lax.top_k(probs, top_k)


class MoEFeedForward(nnx.Module):
    def __init__(self, config: LLMConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        e, d, h = config.moe_num_experts, config.d_model, config.moe_hidden
        self.top_k, self.impl = config.moe_top_k, config.moe_impl
        init = normal_init(0.02)
        self.router = param(rngs, init, (d, e), ("embed", None), param_dtype)
        self.gate = param(rngs, init, (e, d, h), ("experts", "embed", "expert_mlp"), param_dtype)
        self.up = param(rngs, init, (e, d, h), ("experts", "embed", "expert_mlp"), param_dtype)
        self.down = param(rngs, init, (e, h, d), ("experts", "expert_mlp", "embed"), param_dtype)

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
