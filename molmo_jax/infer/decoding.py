"""Token-level generation with a preallocated KV cache: prefill once, then one compiled decode step.

Batches are right-padded with -1 (prompt lengths bucketed so that a handful of compilations serve
every request). As in the original: positions come from the valid mask, the first step takes the
logits at each row's last real token, generated tokens go into cache slots after the padded
prompt (`T + t`) while carrying contiguous positions (`n_valid + t`), and a finished row keeps
emitting EOS with log-probability 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from molmo_jax.model.llm import MASK_VALUE, KVCache, positions_from_valid
from molmo_jax.model.molmo import Molmo
from molmo_jax.model.sharding import use_mesh_rules

DEFAULT_BUCKETS = (64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding options. `temperature == 0` (the default) is greedy; `num_beams > 1` is beam search."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    length_buckets: tuple[int, ...] = DEFAULT_BUCKETS

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.num_beams < 1:
            raise ValueError(f"invalid sampling options {self}")
        if self.num_beams > 1 and self.temperature > 0:
            raise ValueError("beam search is deterministic: use temperature=0 with num_beams > 1")


@dataclasses.dataclass
class Generated:
    """`tokens` `[B, N]` (EOS-padded after a row finished), `scores` `[B]` summed log-probs,
    `lengths` `[B]` tokens up to and including the first EOS (or N)."""

    tokens: np.ndarray
    scores: np.ndarray
    lengths: np.ndarray


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if n <= b:
            return b
    return n  # longer than every bucket: exact length (one more compilation)


def pad_batch(batch: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """Right-pad `input_ids` with -1 to `length` (other keys unchanged)."""
    ids = np.asarray(batch["input_ids"])
    if ids.shape[1] > length:
        raise ValueError(f"prompt length {ids.shape[1]} exceeds the padded length {length}")
    out = dict(batch)
    out["input_ids"] = np.pad(ids, ((0, 0), (0, length - ids.shape[1])), constant_values=-1)
    return out


def _decode_bias(key_valid: jax.Array, index: jax.Array) -> jax.Array:
    allowed = key_valid & (jnp.arange(key_valid.shape[1]) <= index)[None]
    return jnp.where(allowed, 0.0, MASK_VALUE)[:, None, :].astype(jnp.float32)


def _select(logits: jax.Array, key: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Next token `[B]` from float32 logits `[B, V]`: greedy, or temperature / top-k / top-p sampling."""
    if cfg.temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if cfg.top_p < 1:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        cutoff_idx = jnp.sum(cum - jax.nn.softmax(sorted_logits, axis=-1) < cfg.top_p, axis=-1) - 1
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx[:, None], axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


def _choose(logits: jax.Array, done: jax.Array, key: jax.Array, eos: jax.Array, *, cfg: SamplingConfig):
    """Next tokens, their log-probs and the updated done flags; finished rows repeat EOS at log-prob 0."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    tokens = jnp.where(done, eos, _select(logits, key, cfg)).astype(jnp.int32)
    step_logp = jnp.where(done, 0.0, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0])
    return tokens, step_logp, done | (tokens == eos)


class Generator:
    """Compiled prefill and decode step for one model; reuse it across requests.

    With a `mesh`, parameters are expected to be placed on it already (e.g. by `load_pretrained(...,
    mesh=mesh)`) and activations follow the logical-axis rules.
    """

    def __init__(self, model: Molmo, *, mesh: jax.sharding.Mesh | None = None):
        self.config = model.config
        self.graphdef, self.params = nnx.split(model)
        self.mesh = mesh
        self.trace_counts = {"prefill": 0, "decode": 0}
        self._prefill = jax.jit(self._prefill_fn, static_argnames=("cache_len",))
        self._decode = jax.jit(self._decode_fn, donate_argnames=("caches",))
        self._step = jax.jit(self._step_fn, donate_argnames=("caches",), static_argnames=("cfg",))
        self._first = jax.jit(_choose, static_argnames=("cfg",))

    def _rules(self):
        return use_mesh_rules(self.mesh) if self.mesh is not None else _nullcontext()

    def _prefill_fn(self, params, input_ids, images, image_masks, image_input_idx, *, cache_len: int):
        self.trace_counts["prefill"] += 1
        with self._rules():
            model = nnx.merge(self.graphdef, params)
            b, t = input_ids.shape
            valid = input_ids != -1
            positions = positions_from_valid(valid)
            x, _ = model.embed_inputs(input_ids, images, image_masks, image_input_idx)
            key_valid = jnp.pad(valid, ((0, 0), (0, cache_len - t)))
            allowed = (jnp.arange(cache_len)[None, :] <= jnp.arange(t)[:, None])[None] & key_valid[:, None, :]
            bias = jnp.where(allowed, 0.0, MASK_VALUE).astype(jnp.float32)
            caches = model.init_cache(b, cache_len)
            h, caches, _ = model.llm(x, positions, bias, caches, 0)
            n_valid = valid.sum(-1)
            last = jnp.take_along_axis(h, jnp.maximum(n_valid - 1, 0)[:, None, None], axis=1)
            return model.llm.logits(last)[:, 0], caches, key_valid, n_valid

    def _decode_logits(self, params, tokens, caches, key_valid, positions, index):
        with self._rules():
            model = nnx.merge(self.graphdef, params)
            key_valid = key_valid.at[:, index].set(True)
            x = model.llm.embed(tokens[:, None], model.dtype)
            h, caches, _ = model.llm(x, positions[:, None], _decode_bias(key_valid, index), caches, index)
            return model.llm.logits(h)[:, 0], caches, key_valid

    def _decode_fn(self, params, tokens, caches, key_valid, positions, index):
        """One token per row through the cache -> (logits `[B, V]`, caches, key_valid)."""
        self.trace_counts["decode"] += 1
        return self._decode_logits(params, tokens, caches, key_valid, positions, index)

    def _step_fn(self, params, tokens, caches, key_valid, positions, index, done, key, eos, *, cfg):
        """Decode one token and choose the next in the same compiled call (greedy / sampling)."""
        self.trace_counts["decode"] += 1
        logits, caches, key_valid = self._decode_logits(params, tokens, caches, key_valid, positions, index)
        key, sub = jax.random.split(key)
        tokens, logp, done = _choose(logits, done, sub, eos, cfg=cfg)
        return tokens, logp, done, caches, key_valid, key

    def prefill(self, batch: dict, cache_len: int):
        get = lambda k: None if batch.get(k) is None else jnp.asarray(batch[k])
        return self._prefill(
            self.params,
            jnp.asarray(batch["input_ids"]),
            get("images"),
            get("image_masks"),
            get("image_input_idx"),
            cache_len=cache_len,
        )

    def stream(
        self, batch: dict, eos_id: int, cfg: SamplingConfig, key: jax.Array | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (tokens `[B]`, done `[B]`) step by step (greedy or sampling; not beam search)."""
        if cfg.num_beams > 1:
            raise ValueError("stream() does not do beam search; use generate()")
        for tokens, _, done in self._steps(batch, eos_id, cfg, key):
            yield np.asarray(tokens), np.asarray(done)
            if bool(np.all(np.asarray(done))):
                return

    def _steps(self, batch, eos_id, cfg, key):
        key = jax.random.key(0) if key is None else key
        t = bucket_length(np.asarray(batch["input_ids"]).shape[1], cfg.length_buckets)
        batch = pad_batch(batch, t)
        cache_len = t + cfg.max_new_tokens
        logits, caches, key_valid, positions = self.prefill(batch, cache_len)
        eos = jnp.int32(eos_id)
        key, sub = jax.random.split(key)
        tokens, logp, done = self._first(logits, jnp.zeros(logits.shape[0], bool), sub, eos, cfg=cfg)
        for step in range(cfg.max_new_tokens):
            yield tokens, logp, done
            if step + 1 == cfg.max_new_tokens:
                return
            tokens, logp, done, caches, key_valid, key = self._step(
                self.params,
                tokens,
                caches,
                key_valid,
                positions + step,
                jnp.int32(t + step),
                done,
                key,
                eos,
                cfg=cfg,
            )

    def generate(
        self, batch: dict, eos_id: int, cfg: SamplingConfig = SamplingConfig(), key: jax.Array | None = None
    ) -> Generated:
        """Generate for a right-padded batch (`input_ids`, optional `images`, `image_masks`,
        `image_input_idx`) until every row emitted EOS or `max_new_tokens`."""
        if cfg.num_beams > 1:
            return self._beam_search(batch, eos_id, cfg)
        tokens, scores = [], 0.0
        for tok, logp, done in self._steps(batch, eos_id, cfg, key):
            tokens.append(tok)
            scores = scores + logp
            if bool(jnp.all(done)):
                break
        return _finish(np.stack([np.asarray(t) for t in tokens], axis=1), np.asarray(scores), eos_id)

    def _beam_search(self, batch, eos_id: int, cfg: SamplingConfig) -> Generated:
        """Beam search over `num_beams` hypotheses per row; finished hypotheses extend with EOS at
        log-prob 0. Returns the best hypothesis per row."""
        k = cfg.num_beams
        t = bucket_length(np.asarray(batch["input_ids"]).shape[1], cfg.length_buckets)
        batch = pad_batch(batch, t)
        cache_len = t + cfg.max_new_tokens
        logits, caches, key_valid, positions = self.prefill(batch, cache_len)
        b, v = logits.shape
        # Expand every row to k beams; only beam 0 is live at the start.
        rep = lambda a: jnp.repeat(a, k, axis=0)
        caches = [KVCache(rep(c.k), rep(c.v)) for c in caches]
        key_valid, positions, logits = rep(key_valid), rep(positions), rep(logits)
        beam_scores = jnp.tile(jnp.asarray([0.0] + [-jnp.inf] * (k - 1)), b)
        done = jnp.zeros(b * k, bool)
        history = jnp.zeros((b * k, 0), jnp.int32)
        for step in range(cfg.max_new_tokens):
            logp = jax.nn.log_softmax(logits, axis=-1)
            eos_only = jnp.full((v,), -jnp.inf).at[eos_id].set(0.0)
            logp = jnp.where(done[:, None], eos_only[None], logp)
            total = (beam_scores[:, None] + logp).reshape(b, k * v)
            top_scores, top_idx = jax.lax.top_k(total, k)
            parent = (top_idx // v + jnp.arange(b)[:, None] * k).reshape(-1)
            tokens = (top_idx % v).reshape(-1).astype(jnp.int32)
            beam_scores = top_scores.reshape(-1)
            history = jnp.concatenate([history[parent], tokens[:, None]], axis=1)
            done = done[parent] | (tokens == eos_id)
            if step + 1 == cfg.max_new_tokens or bool(jnp.all(done)):
                break
            caches = [KVCache(c.k[parent], c.v[parent]) for c in caches]
            logits, caches, key_valid = self._decode(
                self.params, tokens, caches, key_valid[parent], positions + step, jnp.int32(t + step)
            )
        best = jnp.argmax(beam_scores.reshape(b, k), axis=-1) + jnp.arange(b) * k
        return _finish(np.asarray(history[best]), np.asarray(beam_scores[best]), eos_id)


def _finish(tokens: np.ndarray, scores: np.ndarray, eos_id: int) -> Generated:
    is_eos = tokens == eos_id
    lengths = np.where(is_eos.any(1), is_eos.argmax(1) + 1, tokens.shape[1])
    return Generated(tokens=tokens, scores=scores.astype(np.float32), lengths=lengths)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
