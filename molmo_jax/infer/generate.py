"""High-level generation: images + prompts -> texts (and token ids, scores, parsed points)."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from molmo_jax.infer.decoding import Generator, SamplingConfig
from molmo_jax.model.molmo import Molmo

_GENERATORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class GenerationOutput:
    """Per example: `texts`, generated `token_ids` (up to and including EOS), summed log-prob
    `scores`, `points` in pixel coordinates of the original image, and `image_sizes` (w, h)."""

    texts: list[str]
    token_ids: list[np.ndarray]
    scores: np.ndarray
    points: list[list[tuple[float, float]]]
    image_sizes: list[tuple[int, int] | None]


def generator_for(model: Molmo, mesh: jax.sharding.Mesh | None = None) -> Generator:
    """The cached compiled `Generator` of a model (one per model object and mesh)."""
    per_model = _GENERATORS.setdefault(model, {})
    key = None if mesh is None else id(mesh)
    if key not in per_model:
        per_model[key] = Generator(model, mesh=mesh)
    return per_model[key]


def prepare_batch(processor, images: Sequence[Any], prompts: Sequence[str], style: str = "demo"):
    """Processor outputs for each (image, prompt) pair, collated into one right-padded batch."""
    from molmo_jax.preprocess.image import load_image

    if len(images) != len(prompts):
        raise ValueError(
            f"{len(images)} images for {len(prompts)} prompts: give one image (or None) per prompt"
        )
    examples, sizes = [], []
    for image, prompt in zip(images, prompts):
        array = None if image is None else load_image(image)
        sizes.append(None if array is None else (int(array.shape[1]), int(array.shape[0])))
        examples.append(processor(images=array, text=prompt, style=style))
    return processor.collate(examples), sizes


def generate(
    model: Molmo,
    processor,
    images: Sequence[Any] | Any,
    prompts: Sequence[str] | str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    seed: int = 0,
    style: str = "demo",
    mesh: jax.sharding.Mesh | None = None,
) -> GenerationOutput:
    """Answer each prompt about its image (None for text-only) in one batch.

    Greedy by default; `temperature > 0` samples (with `top_k` / `top_p`) from `seed`;
    `num_beams > 1` runs beam search.
    """
    from molmo_jax.preprocess.pointing import extract_points

    if isinstance(prompts, str):
        prompts, images = [prompts], [images]
    batch, sizes = prepare_batch(processor, list(images), list(prompts), style)
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams
    )
    eos = processor.tokenizer.eos_id
    out = generator_for(model, mesh).generate(batch, eos, cfg, key=jax.random.key(seed))
    token_ids = [out.tokens[i, : out.lengths[i]] for i in range(len(prompts))]
    texts = [processor.tokenizer.decode(ids.tolist()) for ids in token_ids]
    points = [extract_points(t, *s) if s is not None else [] for t, s in zip(texts, sizes)]
    return GenerationOutput(
        texts=texts, token_ids=token_ids, scores=out.scores, points=points, image_sizes=sizes
    )
