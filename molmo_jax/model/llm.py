"""Decoder-only LLM: token embeddings (+128 extra rows), attention with RoPE / GQA, SwiGLU or MoE
feed-forward, pre-norm (Qwen2, OLMoE) or norm-after (OLMo) blocks, final RMSNorm, untied LM head.

Einsum letters: B batch, T query length, S key length, D d_model, N query heads, K kv heads,
G query heads per kv head, H head dim, F feed-forward hidden.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from molmo_jax.model.config import LLMConfig
from molmo_jax.model.layers import (
    RMSNorm,
    call_rematerialized,
    kernel_init,
    param,
    shard,
    weight_init,
    zeros_init,
)
from molmo_jax.model.moe import MoEFeedForward, moe_aux_losses

MASK_VALUE = float(jnp.finfo(jnp.float32).min)


class KVCache(NamedTuple):
    """Keys and values of one block for `S` preallocated positions: `[B, S, K, H]` each."""

    k: jax.Array
    v: jax.Array


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """sin, cos `[B, T, H]` for rotate-half RoPE, computed in float32."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    ang = positions.astype(jnp.float32)[..., None] * inv_freq
    ang = jnp.concatenate([ang, ang], axis=-1)
    return jnp.sin(ang), jnp.cos(ang)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """x `[B, T, heads, H]`; the two halves of each head vector form the rotated pairs."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, config: LLMConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        d, n, k, h = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
        self.config = config
        init, out_init = kernel_init(config.init, d), kernel_init(config.init, n * h, config.num_layers)
        self.q = param(rngs, init, (d, n, h), ("embed", "q_heads", "head_dim"), param_dtype)
        self.k = param(rngs, init, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.v = param(rngs, init, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.o = param(rngs, out_init, (n, h, d), ("q_heads", "head_dim", "embed"), param_dtype)
        if config.qkv_bias:
            self.q_bias = param(rngs, zeros_init, (n, h), ("q_heads", "head_dim"), param_dtype)
            self.k_bias = param(rngs, zeros_init, (k, h), ("kv_heads", "head_dim"), param_dtype)
            self.v_bias = param(rngs, zeros_init, (k, h), ("kv_heads", "head_dim"), param_dtype)
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        if config.qk_norm:  # RMSNorm over the whole projection, before the head split
            self.q_norm = RMSNorm(n * h, eps=config.norm_eps, rngs=rngs, param_dtype=param_dtype)
            self.k_norm = RMSNorm(k * h, eps=config.norm_eps, rngs=rngs, param_dtype=param_dtype)
        else:
            self.q_norm = self.k_norm = None

    def _project(self, x, kernel, bias, norm):
        y = jnp.einsum("BTD,DNH->BTNH", x, kernel[...].astype(x.dtype))
        if bias is not None:
            y = y + bias[...].astype(x.dtype)
        if norm is not None:
            b, t, n, h = y.shape
            y = norm(y.reshape(b, t, n * h)).reshape(b, t, n, h)
        return y

    def __call__(
        self,
        x: jax.Array,
        sin: jax.Array,
        cos: jax.Array,
        bias: jax.Array,
        cache: KVCache | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """x `[B, T, D]`, bias `[B, T, S]` additive mask -> (`[B, T, D]`, updated cache).

        Without a cache S == T. With one, this step's keys/values are written at `cache_index`
        and the queries attend over all S cached positions.
        """
        q = apply_rope(self._project(x, self.q, self.q_bias, self.q_norm), sin, cos)
        k = apply_rope(self._project(x, self.k, self.k_bias, self.k_norm), sin, cos)
        v = self._project(x, self.v, self.v_bias, None)
        q = shard(q, ("batch", "length", "q_heads", "head_dim"))
        if cache is not None:
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), start)
            v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), start)
            cache = KVCache(k, v)
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        b, t, n, h = q.shape
        kv = k.shape[2]
        q = q.reshape(b, t, kv, n // kv, h) * (1 / math.sqrt(h))  # query head i uses kv head i // (n / kv)
        scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
        scores = scores + bias[:, None, None].astype(jnp.float32)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)
        return jnp.einsum("BTNH,NHD->BTD", out, self.o[...].astype(out.dtype)), cache


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x)); the checkpoints fuse [up; gate] into one `ff_proj`."""

    def __init__(self, config: LLMConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        d, f = config.d_model, config.mlp_hidden
        init, out_init = kernel_init(config.init, d), kernel_init(config.init, f, config.num_layers)
        self.gate = param(rngs, init, (d, f), ("embed", "mlp"), param_dtype)
        self.up = param(rngs, init, (d, f), ("embed", "mlp"), param_dtype)
        self.down = param(rngs, out_init, (f, d), ("mlp", "embed"), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        h = jax.nn.silu(x @ self.gate[...].astype(dt)) * (x @ self.up[...].astype(dt))
        h = shard(h, ("batch", "length", "mlp"))
        return h @ self.down[...].astype(dt)


def dropout_keep_prob(
    shape: tuple[int, int], rate: float, response_rate: float = 0.0, response_mask: jax.Array | None = None
) -> jax.Array:
    """Per-token keep probability `[B, T]` of response residual dropout: `1 - response_rate` on
    response tokens when `response_rate > 0`, `1 - rate` everywhere else."""
    keep = jnp.full(shape, 1.0 - rate, jnp.float32)
    if response_rate > 0:
        if response_mask is None:
            raise ValueError("response residual dropout needs a response mask (loss_masks > 0)")
        keep = jnp.where(response_mask, 1.0 - response_rate, keep)
    return keep


def residual_dropout(y: jax.Array, keep: jax.Array | None, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout of a residual branch `[B, T, D]` with per-token keep probabilities `[B, T]`
    (identity without `keep` or `rng`)."""
    if keep is None or rng is None:
        return y
    p = keep[:, :, None]
    mask = jax.random.bernoulli(rng, jnp.broadcast_to(p, y.shape))
    return jnp.where(mask, y / p.astype(y.dtype), 0).astype(y.dtype)


class DecoderBlock(nnx.Module):
    def __init__(self, config: LLMConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.norm_after = config.norm_after
        self.attn_norm = RMSNorm(config.d_model, eps=config.norm_eps, **kw)
        self.attn = Attention(config, **kw)
        self.ff_norm = RMSNorm(config.d_model, eps=config.norm_eps, **kw)
        self.mlp = MoEFeedForward(config, **kw) if config.is_moe else SwiGLU(config, **kw)

    def __call__(self, x, sin, cos, bias, cache=None, cache_index=None, keep=None, rng=None):
        """-> (x, cache, aux) where aux holds the MoE routing (empty for dense blocks).

        With `keep` (`[B, T]` keep probabilities) and `rng`, both residual branches go through
        `residual_dropout`; otherwise the block is deterministic."""
        aux: dict[str, jax.Array] = {}
        keys = (None, None) if rng is None else tuple(jax.random.split(rng))
        if self.norm_after:
            a, cache = self.attn(x, sin, cos, bias, cache, cache_index)
            x = x + residual_dropout(self.attn_norm(a), keep, keys[0])
            x = x + residual_dropout(self.ff_norm(self._mlp(x, aux)), keep, keys[1])
        else:
            a, cache = self.attn(self.attn_norm(x), sin, cos, bias, cache, cache_index)
            x = x + residual_dropout(a, keep, keys[0])
            h = self.ff_norm(x)
            if isinstance(self.mlp, MoEFeedForward):
                aux["moe_in"] = h
            x = x + residual_dropout(self._mlp(h, aux), keep, keys[1])
        return shard(x, ("batch", "length", "embed")), cache, aux

    def _mlp(self, h, aux):
        if isinstance(self.mlp, MoEFeedForward):
            y, routing = self.mlp(h)
            aux.update(routing, moe_out=y)
            return y
        return self.mlp(h)


class Decoder(nnx.Module):
    """Embeddings, blocks, final norm and LM head of the language model."""

    def __init__(self, config: LLMConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.config = config
        d = config.d_model
        embed_init = weight_init(config.init, 1.0)
        self.embedding = param(rngs, embed_init, (config.embedding_size, d), ("vocab", "embed"), param_dtype)
        self.new_embedding = param(
            rngs, embed_init, (config.additional_vocab_size, d), ("new_vocab", "embed"), param_dtype
        )
        self.blocks = nnx.List(
            [DecoderBlock(config, rngs=rngs, param_dtype=param_dtype) for _ in range(config.num_layers)]
        )
        self.ln_f = RMSNorm(d, eps=config.norm_eps, rngs=rngs, param_dtype=param_dtype)
        self.lm_head = param(
            rngs, kernel_init(config.init, d), (d, config.embedding_size), ("embed", "vocab"), param_dtype
        )

    def embed(self, input_ids: jax.Array, dtype) -> jax.Array:
        """Token ids `[B, T]` (-1 = padding, read as 0) -> `[B, T, D]`; ids >= embedding_size index
        the additional rows."""
        ids = jnp.maximum(input_ids, 0)
        n_base = self.config.embedding_size
        base = jnp.take(self.embedding[...], jnp.minimum(ids, n_base - 1), axis=0)
        extra = jnp.take(
            self.new_embedding[...], jnp.clip(ids - n_base, 0, self.config.additional_vocab_size - 1), axis=0
        )
        x = jnp.where((ids >= n_base)[..., None], extra, base).astype(dtype)
        return shard(x, ("batch", "length", "embed"))

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        bias: jax.Array,
        caches: list[KVCache] | None = None,
        cache_index: jax.Array | int | None = None,
        *,
        collect: bool = False,
        remat: bool = False,
        keep: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
        valid: jax.Array | None = None,
    ) -> tuple[jax.Array, list[KVCache] | None, dict]:
        """Embedded inputs `[B, T, D]` -> (normed hidden `[B, T, D]`, caches, intermediates).

        With `collect`, intermediates hold `hidden_states` (block inputs, then the final normed
        state: `[L + 1, B, T, D]`) and, for MoE, the stacked routing arrays. For MoE decoders
        intermediates always hold `moe_losses` (load-balancing and router z-loss over the `valid`
        tokens, unweighted). `keep` `[B, T]` and `dropout_rng` switch on residual dropout (block i
        uses `fold_in(dropout_rng, i)`).
        """
        sin, cos = rope_angles(positions, self.config.head_dim, self.config.rope_theta)
        hidden, auxes, new_caches = [], [], []
        run = call_rematerialized if remat else (lambda blk, *a: blk(*a))
        for i, block in enumerate(self.blocks):
            if collect:
                hidden.append(x)
            cache = caches[i] if caches is not None else None
            rng = None if dropout_rng is None or keep is None else jax.random.fold_in(dropout_rng, i)
            x, cache, aux = run(block, x, sin, cos, bias, cache, cache_index, keep, rng)
            new_caches.append(cache)
            auxes.append(aux)
        x = self.ln_f(x)
        inter: dict = {}
        if self.config.is_moe and auxes:
            inter["moe_losses"] = moe_aux_losses(
                jnp.stack([a["router_logits"] for a in auxes]),
                jnp.stack([a["topk_idx"] for a in auxes]),
                valid,
            )
        if collect:
            inter["hidden_states"] = jnp.stack(hidden + [x])
            if auxes and auxes[0]:
                inter.update({k: jnp.stack([a[k] for a in auxes]) for k in auxes[0]})
        return x, (new_caches if caches is not None else None), inter

    def logits(self, x: jax.Array) -> jax.Array:
        """LM head over the `embedding_size` base rows, float32 output."""
        return jnp.einsum(
            "BTD,DV->BTV", x, self.lm_head[...].astype(x.dtype), preferred_element_type=jnp.float32
        )


def attention_bias(
    valid: jax.Array,
    subsegment_ids: jax.Array | None = None,
    key_valid: jax.Array | None = None,
    query_offset: jax.Array | int = 0,
) -> jax.Array:
    """Additive float32 mask `[B, T, S]`: causal, padding keys masked, and (for packed
    conversations) query i sees key j only when subseg[i] <= subseg[j].

    `valid` `[B, T]` marks real query tokens; `key_valid` `[B, S]` real keys (defaults to `valid`);
    `query_offset` is the cache slot of the first query (for decoding with a KV cache).
    Masked entries hold the most negative finite float, so a fully masked row stays finite.
    """
    key_valid = valid if key_valid is None else key_valid
    t, s = valid.shape[1], key_valid.shape[1]
    q_pos = jnp.arange(t)[:, None] + query_offset
    allowed = (jnp.arange(s)[None, :] <= q_pos)[None] & key_valid[:, None, :]
    if subsegment_ids is not None:
        allowed = allowed & valid[:, :, None] & (subsegment_ids[:, :, None] <= subsegment_ids[:, None, :])
    return jnp.where(allowed, 0.0, MASK_VALUE).astype(jnp.float32)


def positions_from_valid(valid: jax.Array) -> jax.Array:
    """clamp(cumsum(valid) - 1, 0): right-padded rows get 0..n-1, pads repeat the last."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


class CausalLM(nnx.Module):
    """The decoder alone as a text-only language model (e.g. a stage-1 LLM backbone). Its
    parameters live under `llm.*`, the same paths as inside `Molmo`."""

    def __init__(self, config: LLMConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=jnp.float32):
        self.dtype = jnp.dtype(dtype)
        self.llm = Decoder(config, rngs=rngs, param_dtype=param_dtype)

    def __call__(
        self,
        input_ids: jax.Array,
        position_ids: jax.Array | None = None,
        *,
        return_intermediates: bool = False,
    ) -> tuple[jax.Array, dict]:
        """input_ids `[B, T]` (-1 = padding) -> (float32 logits `[B, T, V]`, intermediates)."""
        valid = input_ids != -1
        positions = positions_from_valid(valid) if position_ids is None else position_ids
        x = self.llm.embed(input_ids, self.dtype)
        h, _, inter = self.llm(x, positions, attention_bias(valid), collect=return_intermediates, valid=valid)
        return self.llm.logits(h), inter
