"""Grain input pipelines: prepared datasets -> static-shape Molmo batches, with mixtures and exact resume.

Two halves (DESIGN "Grain in two halves")::

    MapDataset   source (PreparedSource) -> global shuffle (seeded, reshuffled every epoch) -> repeat
                 [-> mix several tasks with weights] -> random_map: record -> example (style, message
                 shuffling, multi-annotation sampling) -> processor (decode, crops, tokens)
                 -> slice by process (process_index::process_count)
    IterDataset  pad / truncate every example to the token and crop budgets (counted) -> batch
                 -> mp_prefetch (worker processes) -> stats (main process)

Every random choice comes from seeds: the shuffle from ``seed`` and the task name, the per-example
``RandomState`` from Grain's per-index generator, so a stream is a pure function of the config and
``get_state`` / ``set_state`` (or the Orbax Grain checkpoint handler) resume it exactly, with or
without worker processes. Slicing happens after the random map, so example ``i`` of the global stream
is the same whatever the number of processes, and the processes' shards are disjoint and cover it.
(Changing ``num_workers`` changes which examples share a batch, not the set: Grain's ``mp_prefetch``
batches per worker.)

Batches (``B`` = per-process ``batch_size``, ``T`` = ``sequence_length``, ``C`` = crop budget, default
``max_crops + 1``)::

    input_ids, target_tokens, position_ids, subsegment_ids  int64 [B, T]   (-1 = padding)
    loss_masks                                              float32 [B, T]
    images float32 [B, C, 576, 588]   image_masks float32 [B, C, 576]   image_input_idx int32 [B, C, 144]

``subsegment_ids`` is always present (ones for unpacked examples) so every batch has the same keys.
Examples longer than ``T`` are cut on the right (as the original collator) and image features whose
position falls past the cut are dropped; crops beyond ``C`` are dropped. Both are counted in
:attr:`BatchStats` (``iterator.stats``), with a warning the first time. A record that cannot become an
example raises :class:`~molmo_jax.data.pixmo.BadRecordError` naming the dataset and record, or with
``on_bad_record="skip"`` is skipped, logged and counted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from molmo_jax.data import prepare
from molmo_jax.data.pixmo import PIXMO_TASKS, BadRecordError, Task

log = logging.getLogger(__name__)

TEXT_KEYS = ("input_ids", "target_tokens", "loss_masks", "position_ids", "subsegment_ids")
IMAGE_KEYS = ("images", "image_masks", "image_input_idx")


# ----------------------------------------------------------------------------------------------
# Tasks and mixtures


def all_tasks() -> dict[str, Task]:
    """Every known task (PixMo and academic), by name."""
    from molmo_jax.data.academic import ACADEMIC_TASKS

    return {**PIXMO_TASKS, **ACADEMIC_TASKS}


def resolve_task(name: str, data_dir: str | os.PathLike | None = None) -> Task:
    """A task by name; a prepared dataset of kind ``jsonl`` in ``data_dir`` is a task of its own name."""
    tasks = all_tasks()
    if name in tasks:
        return tasks[name]
    if data_dir is not None:
        try:
            info = prepare.prepared_info(data_dir, name)
        except prepare.PreparedDataError:
            info = None
        if info is not None and info.get("kind") == "jsonl":
            from molmo_jax.data.jsonl import jsonl_example

            return Task(name, name, jsonl_example)
        if info is not None and info.get("kind") in tasks:
            return dataclasses.replace(tasks[info["kind"]], name=name, prepared=name)
    raise ValueError(
        f"unknown dataset {name!r}: not a known task ({', '.join(sorted(tasks))}) nor a prepared "
        f"jsonl dataset in {data_dir}"
    )


@dataclasses.dataclass(frozen=True)
class MixtureGroup:
    """Tasks sharing ``rate`` of the mixture in proportion to ``sqrt(size)``; ``size_overrides`` cap a
    task's size (the original uses them for PixMo-Cap and the large synthetic chart sets)."""

    name: str
    rate: float
    tasks: tuple[str, ...]
    size_overrides: tuple[tuple[str, int], ...] = ()


# Stage 2 (`3.2-synthetic`, MOLMO_SPEC 8.3). Only tasks that are given sizes take part.
STAGE2_MIXTURE: tuple[MixtureGroup, ...] = (
    MixtureGroup(
        "demo",
        0.15,
        ("pixmo_ask_model_anything", "pixmo_cap", "pixmo_cap_qa", "pixmo_pointing_explanations"),
        (("pixmo_cap", 50_000),),
    ),
    MixtureGroup(
        "aux",
        0.50,
        (
            "coco_2014_vqa_multi",
            "coco_2014_vqa",
            "text_vqa",
            "okvqa",
            "chart_qa",
            "chart_qa_weighted",
            "doc_qa",
            "info_qa",
            "ai2_diagram",
            "a_okvqa_mc",
            "a_okvqa_da",
            "android_control",
            "science_qa_img",
            "tabwmp_da",
            "st_qa",
            "tally_qa",
            "pixmo_docs_charts",
            "pixmo_docs_tables",
            "pixmo_docs_other",
            "pixmo_docs_diagrams",
            "dv_qa",
            "figure_qa",
            "plot_qa",
            "pixmo_clocks",
        ),
        (("dv_qa", 10_000), ("figure_qa", 10_000), ("plot_qa", 20_000)),
    ),
    MixtureGroup(
        "pointing",
        0.35,
        (
            "pixmo_points",
            "pixmo_count",
            "pixmo_points_high_freq",
            "pixmo_points_counting",
            "pixmo_points_high_freq_counting",
            "pixmo_count_counting",
        ),
    ),
)


def mixture_rates(
    sizes: Mapping[str, int], groups: Sequence[MixtureGroup] = STAGE2_MIXTURE
) -> dict[str, float]:
    """Sampling rates from dataset sizes: within a group ``sqrt(min(size, override))`` normalised to the
    group's rate; groups without any of the given tasks drop out and the rates are renormalised to 1.
    Raises for a task in no group or a non-positive size."""
    group_of = {t: g for g in groups for t in g.tasks}
    for task, size in sizes.items():
        if task not in group_of:
            raise ValueError(
                f"task {task!r} is in no mixture group ({', '.join(g.name for g in groups)}); give the "
                "mixture explicit weights (a task -> weight mapping; the trainer's data.task_weights)"
            )
        if size <= 0:
            raise ValueError(f"task {task!r} has size {size}")
    rates: dict[str, float] = {}
    for g in groups:
        overrides = dict(g.size_overrides)
        roots = {t: math.sqrt(min(sizes[t], overrides.get(t, sizes[t]))) for t in g.tasks if t in sizes}
        total = sum(roots.values())
        for t, r in roots.items():
            rates[t] = g.rate * r / total
    norm = sum(rates.values())
    if not norm:
        raise ValueError("mixture_rates needs at least one task")
    return {t: r / norm for t, r in rates.items()}


def task_sizes(tasks: Sequence[str], data_dir: str | os.PathLike, split: str = "train") -> dict[str, int]:
    """Prepared sizes (records after grouping by image) of the tasks' datasets."""
    return {t: prepare.prepared_size(data_dir, resolve_task(t, data_dir).prepared, split) for t in tasks}


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Pipeline settings.

    Attributes:
      batch_size: examples per batch on this process.
      sequence_length: token budget ``T`` (training 2304; evaluation 1536 / 4096 high-res).
      max_crops: crop budget ``C``; default the processor's ``max_crops + 1`` (global view + tiles).
      seed: one seed for shuffles and per-example randomness (the original's global seed is 6198).
      num_epochs: passes over a single task (``None``: forever; mixtures always repeat forever).
      shuffle: global shuffle of the records (reshuffled each epoch).
      for_inference: prompts without targets (evaluation).
      shuffle_conversations: shuffle packed conversations (training, as the original).
      max_conversations: sample at most this many conversations of an image (multi-annotation
        sampling, without replacement); ``None`` keeps all.
      on_bad_record: ``"raise"`` or ``"skip"`` (counted and logged).
      drop_remainder: drop a last partial batch; otherwise it is padded with -1 examples (counted in
        ``num_padding_examples``) so shapes stay static.
      num_workers: ``mp_prefetch`` worker processes (0: none).
      read_threads / prefetch: Grain read threads and buffered examples per process.
      process_index / process_count: this process's shard (default ``jax.process_index()/count()``).
    """

    batch_size: int
    sequence_length: int = 2304
    max_crops: int | None = None
    seed: int = 6198
    num_epochs: int | None = None
    shuffle: bool = True
    for_inference: bool = False
    shuffle_conversations: bool = True
    max_conversations: int | None = None
    on_bad_record: str = "raise"
    drop_remainder: bool = True
    num_workers: int = 0
    per_worker_buffer_size: int = 1
    read_threads: int = 1
    prefetch: int | None = None
    process_index: int | None = None
    process_count: int | None = None

    def __post_init__(self):
        if self.batch_size < 1 or self.sequence_length < 1:
            raise ValueError("batch_size and sequence_length must be positive")
        if self.on_bad_record not in ("raise", "skip"):
            raise ValueError(f"on_bad_record must be 'raise' or 'skip', got {self.on_bad_record!r}")

    def shard(self) -> tuple[int, int]:
        if self.process_index is None or self.process_count is None:
            import jax

            index = jax.process_index() if self.process_index is None else self.process_index
            count = jax.process_count() if self.process_count is None else self.process_count
        else:
            index, count = self.process_index, self.process_count
        if not 0 <= index < count:
            raise ValueError(f"process_index {index} not in [0, {count})")
        return index, count


# ----------------------------------------------------------------------------------------------
# Transformations (module-level classes: picklable for worker processes)


class _Tag(grain.transforms.Map):
    def __init__(self, task: str):
        self.task = task

    def map(self, record):
        return dict(record, _task=self.task)


class ExampleTransform(grain.transforms.RandomMap):
    """Record -> model-input arrays: the task's example builder, multi-annotation sampling, then
    ``processor.process_example`` with a ``RandomState`` drawn from Grain's per-example generator."""

    def __init__(self, tasks: Mapping[str, Task], processor, config: PipelineConfig):
        self.tasks, self.processor, self.config = dict(tasks), processor, config

    def random_map(self, record, rng: np.random.Generator):
        task = self.tasks[record["_task"]]
        rs = np.random.RandomState(int(rng.integers(0, 2**32)))
        try:
            example = task(record, rs)
            limit = self.config.max_conversations
            convs = example.get("message_list")
            if limit is not None and convs is not None and len(convs) > limit:
                keep = np.sort(rs.choice(len(convs), size=limit, replace=False))
                example = dict(example, message_list=[convs[i] for i in keep])
            out = self.processor.process_example(
                example,
                for_inference=self.config.for_inference,
                shuffle_conversations=self.config.shuffle_conversations,
                rng=rs,
            )
        except (ValueError, KeyError, TypeError, IndexError) as e:
            where = f"{record.get('dataset', task.prepared)} record {record.get('record_index', '?')}"
            if self.config.on_bad_record == "raise":
                raise BadRecordError(f"{where} ({task.name}): {type(e).__name__}: {e}") from e
            log.warning("skipping %s (%s): %s: %s", where, task.name, type(e).__name__, e)
            return {"_skipped": where}
        out.pop("metadata", None)
        return out


def fit_batch(
    examples: Sequence[Mapping[str, np.ndarray]],
    batch_size: int,
    shape: tuple[int, int, int, int, int],
    alloc=np.empty,
) -> dict[str, np.ndarray]:
    """Examples -> one batch of static shapes: text ``[B, T]``, images ``[B, C, ...]``, padded with -1
    (also whole -1 examples up to ``batch_size``), cut on the right; with the per-example counts
    ``num_truncated_tokens``, ``num_dropped_crops``, ``num_skipped_before`` and the batch's
    ``num_padding_examples``. Every array is written once, straight into ``alloc(shape, dtype)``."""
    length, crops, patches, patch_dim, tokens_per_crop = shape
    b = batch_size
    out: dict[str, np.ndarray] = {}
    for key in TEXT_KEYS:
        arr = alloc((b, length), np.float32 if key == "loss_masks" else np.int64)
        for i, ex in enumerate(examples):
            value = ex.get(key)
            n = min(len(ex["input_ids"]), length)
            if value is None:
                if key != "subsegment_ids":
                    raise KeyError(f"example has no {key!r}")
                arr[i, :n] = 1  # unpacked examples: one subsegment
            else:
                arr[i, :n] = value[:n]
            arr[i, n:] = -1
        arr[len(examples) :] = -1
        out[key] = arr
    image_shapes = {
        "images": (patches, patch_dim),
        "image_masks": (patches,),
        "image_input_idx": (tokens_per_crop,),
    }
    for key in IMAGE_KEYS:
        arr = alloc((b, crops) + image_shapes[key], np.int32 if key == "image_input_idx" else np.float32)
        for i, ex in enumerate(examples):
            kept = min(len(ex["images"]), crops) if key in ex else 0
            if kept:
                arr[i, :kept] = ex[key][:kept]
            arr[i, kept:] = -1
        arr[len(examples) :] = -1
        out[key] = arr
    idx = out["image_input_idx"]
    idx[idx >= length] = -1  # features whose token was cut off
    out["num_truncated_tokens"] = np.zeros(b, np.int32)
    out["num_dropped_crops"] = np.zeros(b, np.int32)
    out["num_skipped_before"] = np.zeros(b, np.int32)
    for i, ex in enumerate(examples):
        out["num_truncated_tokens"][i] = max(0, len(ex["input_ids"]) - length)
        out["num_dropped_crops"][i] = max(0, len(ex["images"]) - crops)
        out["num_skipped_before"][i] = ex.get("_skipped_before", 0)
    out["num_padding_examples"] = np.int32(b - len(examples))
    return out


class _DropSkipped(grain.IterDataset):
    """Drops the markers of skipped records; the next example carries their number."""

    def __iter__(self):
        return _DropSkippedIterator(self._parent.__iter__())


class _DropSkippedIterator(grain.DatasetIterator):
    def __next__(self):
        skipped = 0
        while True:
            element = next(self._parent)
            if "_skipped" not in element:
                break
            skipped += 1
        if skipped:
            element = dict(element, _skipped_before=skipped)
        return element

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


class _FitBatch:
    """Grain ``batch_fn``: :func:`fit_batch`. In worker processes Grain asks it (through
    ``enable_shared_memory_output``) to build the batch in shared memory, saving a copy per batch."""

    def __init__(self, batch_size: int, shape: tuple[int, int, int, int, int]):
        self.batch_size, self.shape = batch_size, shape
        self._shared = False

    def enable_shared_memory_output(self) -> None:
        self._shared = True

    def __call__(self, examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return fit_batch(
            examples, self.batch_size, self.shape, alloc=_shared_alloc if self._shared else np.empty
        )


def _shared_alloc(shape, dtype):
    try:  # Grain's shared-memory array (private API; plain memory if it moves)
        from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
    except ImportError:  # pragma: no cover
        return np.empty(shape, dtype)
    return SharedMemoryArray(shape, dtype=dtype)


@dataclasses.dataclass
class BatchStats:
    """Running counts of what the pipeline delivered and altered (main process)."""

    batches: int = 0
    examples: int = 0
    truncated_examples: int = 0
    truncated_tokens: int = 0
    cropped_examples: int = 0
    dropped_crops: int = 0
    skipped_records: int = 0
    padding_examples: int = 0

    def format(self) -> str:
        return (
            f"{self.examples} examples in {self.batches} batches; {self.truncated_examples} truncated "
            f"({self.truncated_tokens} tokens cut), {self.cropped_examples} lost crops "
            f"({self.dropped_crops}), "
            f"{self.skipped_records} bad records skipped, {self.padding_examples} padding examples"
        )


class _StatsIterDataset(grain.IterDataset):
    def __iter__(self):
        return StatsIterator(self._parent.__iter__())


class StatsIterator(grain.DatasetIterator):
    """The pipeline's iterator: batches without the count keys, counts in :attr:`stats` (saved in the
    iterator state, so they resume too)."""

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self.stats = BatchStats()
        self._warned = False

    def __next__(self) -> dict[str, np.ndarray]:
        batch = dict(next(self._parent))
        truncated = batch.pop("num_truncated_tokens")
        crops = batch.pop("num_dropped_crops")
        skipped = batch.pop("num_skipped_before")
        padding = int(batch.pop("num_padding_examples"))
        s = self.stats
        s.batches += 1
        s.examples += len(truncated) - padding
        s.truncated_examples += int((truncated > 0).sum())
        s.truncated_tokens += int(truncated.sum())
        s.cropped_examples += int((crops > 0).sum())
        s.dropped_crops += int(crops.sum())
        s.skipped_records += int(skipped.sum())
        s.padding_examples += padding
        if not self._warned and (truncated.any() or crops.any()):
            self._warned = True
            log.warning(
                "examples exceed the token / crop budget and are truncated (counted in iterator.stats)"
            )
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": self._parent.get_state(), "stats": dataclasses.asdict(self.stats)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["pipeline"])
        self.stats = BatchStats(**state["stats"])


# ----------------------------------------------------------------------------------------------
# Building


def _ensure_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside an absl app mark them parsed (defaults)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _task_seed(seed: int, name: str) -> int:
    return (seed + zlib.crc32(name.encode())) % 2**32


def _records(source, task: str, config: PipelineConfig, repeat_forever: bool) -> grain.MapDataset:
    ds = grain.MapDataset.source(source)
    if len(ds) == 0:
        raise prepare.EmptyDatasetError(f"{task}: the source is empty")
    if config.shuffle:
        ds = ds.shuffle(seed=_task_seed(config.seed, task))
    ds = ds.repeat(None if repeat_forever else config.num_epochs)
    return ds.map(_Tag(task))


def build_map_dataset(
    tasks: str | Sequence[str] | Mapping[str, float],
    processor,
    config: PipelineConfig,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    sources: Mapping[str, Any] | None = None,
) -> grain.MapDataset:
    """The random-access half: records -> shuffled, (mixed,) processed examples of this process.

    ``tasks``: one task name, a list (mixed with :func:`mixture_rates` of the prepared sizes) or a
    mapping name -> weight. ``sources`` overrides the prepared source of a task (any random-access
    sequence of records, e.g. academic records in memory)."""
    if isinstance(tasks, str):
        tasks = [tasks]
    names = list(tasks)
    if not names:
        raise ValueError("no task given")
    resolved = {n: resolve_task(n, data_dir) for n in names}
    sources = dict(sources or {})
    for n, t in resolved.items():
        if n not in sources:
            if data_dir is None:
                raise ValueError(f"task {n!r} needs data_dir (or a source)")
            sources[n] = prepare.open_prepared(data_dir, t.prepared, split)
    if len(names) == 1:
        ds = _records(sources[names[0]], names[0], config, repeat_forever=config.num_epochs is None)
    else:
        if config.num_epochs is not None:
            raise ValueError("a mixture repeats its datasets forever: use num_epochs=None")
        if isinstance(tasks, Mapping):
            weights = {n: float(tasks[n]) for n in names}
        else:
            weights = mixture_rates({n: len(sources[n]) for n in names})
        ds = grain.MapDataset.mix(
            [_records(sources[n], n, config, True) for n in names], weights=[weights[n] for n in names]
        )
    ds = ds.random_map(ExampleTransform(resolved, processor, config), seed=config.seed)
    index, count = config.shard()
    return ds[index::count]


def build_pipeline(
    tasks: str | Sequence[str] | Mapping[str, float],
    processor,
    config: PipelineConfig,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    sources: Mapping[str, Any] | None = None,
) -> grain.IterDataset:
    """The whole pipeline as a Grain ``IterDataset`` of static-shape batches (see the module docstring).
    ``iter()`` gives a :class:`StatsIterator`."""
    cfg = processor.image_config
    crops = config.max_crops if config.max_crops is not None else cfg.max_crops + 1
    shape = (config.sequence_length, crops, cfg.patches_per_crop, cfg.patch_dim, cfg.tokens_per_crop)
    ds = build_map_dataset(tasks, processor, config, data_dir=data_dir, split=split, sources=sources)
    prefetch = config.prefetch if config.prefetch is not None else 2 * config.batch_size
    ids = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=prefetch)
    )
    ids = _DropSkipped(ids)
    ids = ids.batch(
        config.batch_size, drop_remainder=config.drop_remainder, batch_fn=_FitBatch(config.batch_size, shape)
    )
    if config.num_workers > 0:
        _ensure_flags_parsed()
        ids = ids.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.num_workers, per_worker_buffer_size=config.per_worker_buffer_size
            )
        )
    return _StatsIterDataset(ids)
