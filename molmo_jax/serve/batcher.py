"""Request batching: one worker thread groups queued requests into batched `Generator.stream` calls.

Requests are preprocessed (image decoded, prompt tokenized) before they are queued; the worker waits
up to `batch_window_s` after the first request for more (up to `max_batch`), groups those whose
sampling options can share one compiled step (greedy with greedy; sampling only with identical
options and seed), collates them and streams the tokens back to each request's event queue.

Every generation runs with the server's `max_new_tokens` (so the compiled prefill and step are
reused whatever a request asks for) and stops as soon as every row has emitted EOS or reached its own
`max_tokens`; the batch is padded to a power of two (repeating the first row) for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from molmo_jax.infer.decoding import SamplingConfig

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The request queue is at its bound (-> HTTP 503)."""


@dataclasses.dataclass
class Job:
    """One request waiting for (or in) a batched generation.

    `emit(kind, payload)` is called from the worker thread with ("delta", text), then once
    ("done", result dict) or ("error", message).
    """

    example: dict[str, np.ndarray]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    emit: Callable[[str, Any], None] = lambda kind, payload: None
    deadline: float = float("inf")
    cancelled: bool = False
    enqueued_at: float = dataclasses.field(default_factory=time.monotonic)

    def group_key(self) -> tuple:
        if self.temperature == 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.top_k, self.seed)


def async_emitter(loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> Callable[[str, Any], None]:
    """An `emit` that hands events from the worker thread to an asyncio queue on `loop`."""

    def emit(kind: str, payload: Any) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: the client went away
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

    return emit


def _pow2_at_most(n: int, cap: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return max(n, min(b, cap))


class Batcher:
    """Owns the worker thread, the bounded queue and the `Generator`.

    `generator` is a `molmo_jax.infer.decoding.Generator`; `processor` a `MolmoProcessor` (its
    `collate` and `tokenizer.decode` / `eos_id` are used).
    """

    def __init__(
        self,
        generator,
        processor,
        *,
        max_batch: int = 8,
        batch_window_s: float = 0.02,
        max_queue: int = 64,
        max_new_tokens: int = 256,
    ):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.generator = generator
        self.processor = processor
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.max_new_tokens = max_new_tokens
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._held: list[Job] = []  # taken from the queue but left for a later batch (other options)
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batch_sizes: list[int] = []  # requests per generation, most recent last (bounded)
        self.served = 0

    # Lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="molmo-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def pause(self) -> None:
        """Stop taking new batches (queued requests wait; the running batch finishes)."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def queue_size(self) -> int:
        return self._queue.qsize() + len(self._held)

    def submit(self, job: Job) -> None:
        if not self.alive:
            raise QueueFullError("the generation worker is not running")
        full = QueueFullError(f"server busy: {self._queue.maxsize} requests already queued; retry later")
        if self.queue_size() >= self._queue.maxsize:  # held jobs count against the bound too
            raise full
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise full from None

    # Worker -------------------------------------------------------------------------------------
    def _take(self, timeout: float) -> Job | None:
        if not self._running.is_set():
            return None
        if self._held:
            return self._held.pop(0)
        try:
            job = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if not self._running.is_set():  # paused while waiting: keep it for after resume()
            self._held.insert(0, job)
            return None
        return job

    def _gather(self) -> list[Job]:
        first = self._take(timeout=0.1)
        if first is None:
            return []
        jobs = [first]
        key = first.group_key()
        end = time.monotonic() + self.batch_window_s
        held: list[Job] = []
        while len(jobs) < self.max_batch:
            remaining = end - time.monotonic()
            try:
                job = (
                    self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            (jobs if job.group_key() == key else held).append(job)
        # Held jobs (other options) come back before anything newer.
        i = 0
        while i < len(self._held) and len(jobs) < self.max_batch:
            if self._held[i].group_key() == key:
                jobs.append(self._held.pop(i))
            else:
                i += 1
        self._held.extend(held)
        return jobs

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._running.wait()
            if self._stop.is_set():
                break
            jobs = self._gather()
            now = time.monotonic()
            live = []
            for job in jobs:
                if job.cancelled:
                    continue
                if now > job.deadline:
                    job.emit("error", "timed out waiting in the queue")
                    continue
                live.append(job)
            if not live:
                continue
            try:
                self._run(live)
            except Exception as e:  # never let one batch kill the worker
                log.exception("batched generation failed")
                for job in live:
                    job.emit("error", f"generation failed: {type(e).__name__}: {e}")

    def _run(self, jobs: list[Job]) -> None:
        n = len(jobs)
        self.batch_sizes = (self.batch_sizes + [n])[-1000:]
        self.served += n
        rows = _pow2_at_most(n, self.max_batch)
        examples = [j.example for j in jobs] + [jobs[0].example] * (rows - n)
        batch = self.processor.collate(examples)
        head = jobs[0]
        cfg = SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=head.temperature,
            top_k=head.top_k,
            top_p=head.top_p,
        )
        tok = self.processor.tokenizer
        eos = tok.eos_id
        tokens: list[list[int]] = [[] for _ in jobs]
        sent = [""] * n
        finished = [False] * n
        reason = ["length"] * n
        started = time.monotonic()

        def finish(i: int, job, text: str, seconds: float) -> None:
            """Send the unsent tail of row i's text, then its final answer."""
            if text != sent[i] and text.startswith(sent[i]):
                job.emit("delta", text[len(sent[i]) :])
            job.emit(
                "done",
                {
                    "text": text,
                    "token_ids": list(tokens[i]),
                    "finish_reason": reason[i],
                    "batch_size": n,
                    "generation_s": seconds,
                },
            )

        for step_tokens, _ in self.generator.stream(batch, eos, cfg, key=jax.random.key(head.seed)):
            now = time.monotonic()
            for i, job in enumerate(jobs):
                if finished[i]:
                    continue
                if job.cancelled:
                    finished[i] = True
                    continue
                t = int(step_tokens[i])
                tokens[i].append(t)
                if t == eos:
                    finished[i], reason[i] = True, "stop"
                elif len(tokens[i]) >= job.max_tokens:
                    finished[i] = True
                if now > job.deadline and not finished[i]:
                    finished[i] = True
                    job.emit("error", f"timed out after {len(tokens[i])} generated tokens")
                    job.cancelled = True
                    continue
                text = tok.decode(tokens[i])
                if text.startswith(sent[i]) and not text.endswith("\ufffd") and len(text) > len(sent[i]):
                    job.emit("delta", text[len(sent[i]) :])
                    sent[i] = text
                if finished[i]:
                    finish(i, job, text, now - started)
            if all(finished):
                break
        for i, job in enumerate(jobs):  # stream ended (all EOS) before a row was marked finished
            if not finished[i] and not job.cancelled:
                finish(i, job, tok.decode(tokens[i]), time.monotonic() - started)
