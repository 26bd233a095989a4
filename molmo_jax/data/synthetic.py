"""Synthetic PixMo-shaped data: rendered analog clocks and scenes of coloured shapes, from a seed.

It feeds ``make demo``: the images are written to disk, referenced by ``file://`` URLs in parquet
files with PixMo's own columns, so the synthetic data takes the same download -> prepare -> pipeline
path as real PixMo (MOLMO_SPEC 11).

Usage::

    from molmo_jax.data.synthetic import write_synthetic

    train = write_synthetic("data/synthetic", num_images=4000, seed=0)                   # split "train"
    val = write_synthetic("data/synthetic", num_images=330, seed=0, split="validation")  # held out

    image, scene = render_shapes(np.random.default_rng(0), 224)   # in memory: scene.objects, scene.target
    image, clock = render_clock(np.random.default_rng(0), 224)    # clock["hour"], ["minute"], ["second"]
    image, scene = synthetic_scene(seed=0, index=5)               # exactly scene 5 of the "train" files

**Files** (``{split}`` is the ``split`` argument)::

    out_dir/images/{split}/shapes_000000_{sha256[:12]}.png, clock_000000_{sha256[:12]}.png, ...
    out_dir/pixmo_cap/{split}.parquet                 image_url, caption, transcripts
    out_dir/pixmo_points/{split}.parquet              image_url, image_sha256, points, count, label,
                                                      collection_method
    out_dir/pixmo_count/{split}.parquet               image_url, image_sha256, count, points, label
    out_dir/pixmo_ask_model_anything/{split}.parquet  image_url, image_sha256, question, answer
    out_dir/pixmo_clocks/{split}.parquet              image_url, image_sha256, hour, minute, second
    out_dir/pixmo_points_eval/{split}.parquet         + masks  (only when ``eval_masks``; default: not train)

Column types follow the hub cards (MOLMO_SPEC 11.1): Points ``points`` list<struct<x f64, y f64>>,
``count`` int64; Count ``count`` int32, ``points`` list<struct<x f32, y f32>>. Points are object
centres in **pixels**, as the dataset cards say for PixMo-Points and PixMo-Count (the original code
treats PixMo-Points as 0-100, open question MOLMO_SPEC 13.2: whatever reads these files must use the
pixel scale). Unlike real PixMo-Count, validation rows keep their points. ``pixmo_cap`` has no
``image_sha256``, like the real card. PixMo-Clocks' schema is not published in detail: we use
``hour`` (1-12), ``minute``, ``second`` (int32; ``second`` is null when the clock has no second
hand). ``pixmo_points_eval`` mirrors PixMo-Points-Eval for the pointing metric: one row per scene
(its main query) with ``masks``, one boolean ``[H, W]`` mask per point in point order.

**Splits and determinism.** Every image draws from its own generator seeded by
``(seed, split name, family, index)``, so files do not depend on ``num_images`` and the same
arguments give byte-identical files. A held-out set is the same call with another ``split`` name
(e.g. ``"validation"``): a different random stream and its own image folder. File names carry the
content hash, so URL-keyed image caches (the downloader's) never serve a stale image after a re-run
with other settings. Scene target counts are balanced: each block of 11 consecutive scenes
holds every count 0..10 once, in random order.

**Learnability without shortcuts.** Shapes: 7 kinds that stay distinct at ~4 px per feature
(circle, square, triangle, star, diamond, cross, heart), 9 well separated colours with a per-object
jitter of +-12, light backgrounds only (so no object can match its background), object radii of 5-10%
of the image side in three size bins with gaps between them (``small`` / ``medium`` / ``large``),
objects never touch (a gap of 2% of the side), positions described on a 3x3 grid of the image.
Counts are 0..10 of a target label (``"circles"`` or ``"red circles"``), with up to 5 distractors
that do not match it (other kinds, or the same kind in another colour). Nothing but the pixels tells
the count: sizes, colours, positions and backgrounds are drawn independently of it (an object is
only shrunk a size bin when the scene is too crowded to place it). Clocks: the clock fills 60-92% of
the image side, the hour hand is short and thick (45-55% of the radius, 8-11% wide), the minute hand
long and thin (72-85%, 3-4.5%), the optional second hand longest (88-96%) and thinnest, in a colour of
its own;
every face has tick marks or numerals (or both). All images get light uniform noise (none to +-4).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "BACKGROUND_COLOURS",
    "KINDS",
    "SHAPE_COLOURS",
    "SIZE_BINS",
    "Query",
    "ShapeObject",
    "ShapeScene",
    "balanced_count",
    "clock_caption",
    "clock_transcript",
    "describe_group",
    "draw_clock",
    "draw_scene",
    "example_rng",
    "format_time",
    "hand_angles",
    "object_label_map",
    "position_phrase",
    "read_points_eval",
    "region_of",
    "render_clock",
    "render_shapes",
    "sample_scene",
    "scene_caption",
    "scene_qa",
    "scene_transcript",
    "synthetic_clock",
    "synthetic_scene",
    "write_synthetic",
]

RGB = tuple[int, int, int]

# Object colours: far apart from each other and from every (light) background colour.
SHAPE_COLOURS: dict[str, RGB] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 205, 30),
    "green": (40, 150, 55),
    "blue": (35, 85, 215),
    "purple": (135, 55, 185),
    "pink": (240, 110, 185),
    "brown": (125, 75, 35),
    "black": (25, 25, 25),
}
COLOUR_JITTER = 12  # per channel, uniform

BACKGROUND_COLOURS: dict[str, RGB] = {
    "white": (250, 250, 250),
    "light grey": (215, 215, 215),
    "cream": (250, 245, 222),
    "beige": (232, 222, 198),
    "pale blue": (212, 228, 247),
    "pale green": (216, 240, 216),
    "pale pink": (250, 224, 230),
    "lavender": (228, 222, 246),
}

KINDS = ("circle", "square", "triangle", "star", "diamond", "cross", "heart")
# Radius (half the extent) as a fraction of the image side; gaps between bins keep the words honest.
SIZE_BINS: dict[str, tuple[float, float]] = {
    "small": (0.05, 0.06),
    "medium": (0.07, 0.08),
    "large": (0.09, 0.10),
}
SIZE_ORDER = ("small", "medium", "large")
MAX_TARGETS = 10
MAX_DISTRACTORS = 5
OBJECT_GAP = 0.02  # min free space between objects, fraction of the side
EDGE_MARGIN = 0.01

REGIONS = (
    ("upper left", "top", "upper right"),
    ("left", "center", "right"),
    ("lower left", "bottom", "lower right"),
)
_REGION_PHRASES = {
    "upper left": "in the upper left",
    "top": "at the top",
    "upper right": "in the upper right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "lower left": "in the lower left",
    "bottom": "at the bottom",
    "lower right": "in the lower right",
}
_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
)


def plural(kind: str) -> str:
    return kind + "es" if kind.endswith(("s", "x")) else kind + "s"


def number_word(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


# ==============================================================================================
# Shape scenes


@dataclass(frozen=True)
class ShapeObject:
    """One drawn shape. ``x, y`` is its centre in pixels (always inside the shape); ``radius`` is half
    its extent in pixels; ``angle`` its rotation in degrees; ``rgb`` the exact colour drawn."""

    kind: str
    colour: str
    rgb: RGB
    size: str
    x: float
    y: float
    radius: float
    angle: float

    def polygon(self) -> list[tuple[float, float]]:
        """Vertices in pixels (unused for circles, which are drawn as ellipses)."""
        unit = _unit_polygon(self.kind)
        a = math.radians(self.angle)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        pts = unit @ rot.T * self.radius + (self.x, self.y)
        return [(float(px), float(py)) for px, py in pts]


@dataclass(frozen=True)
class Query:
    """A pointing / counting target: a kind, optionally restricted to one colour."""

    kind: str
    colour: str | None = None

    @property
    def label(self) -> str:
        return f"{self.colour} {plural(self.kind)}" if self.colour else plural(self.kind)

    def matches(self, obj: ShapeObject) -> bool:
        return obj.kind == self.kind and (self.colour is None or obj.colour == self.colour)


@dataclass(frozen=True)
class ShapeScene:
    """A scene: image side, background (one or two named colours), objects and the main query."""

    size: int
    background: tuple[str, ...]
    gradient_angle: float
    noise: int
    objects: tuple[ShapeObject, ...]
    target: Query

    def matching(self, query: Query) -> list[ShapeObject]:
        return [o for o in self.objects if query.matches(o)]


@functools.cache
def _unit_polygon(kind: str) -> np.ndarray:
    """Upright outline of `kind` with half-extent ~1 around (0, 0); (0, 0) lies well inside."""
    if kind == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return 0.92 * np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "square":
        return 0.72 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    if kind == "triangle":  # equilateral, centroid at the origin
        t = np.radians([-90, 30, 150])
        return 1.08 * np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "star":
        t = np.radians(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.08, 0.46)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if kind == "diamond":
        return np.array([[0, -1], [0.66, 0], [0, 1], [-0.66, 0]], float)
    if kind == "cross":
        a, b = 0.95, 0.32
        return np.array(
            [
                [-b, -a],
                [b, -a],
                [b, -b],
                [a, -b],
                [a, b],
                [b, b],
                [b, a],
                [-b, a],
                [-b, b],
                [-a, b],
                [-a, -b],
                [-b, -b],
            ],
            float,
        )
    if kind == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1)
        pts -= (pts.max(0) + pts.min(0)) / 2  # bounding-box centre: below the notch, inside
        return pts / np.abs(pts).max() * 0.98
    raise ValueError(f"unknown shape kind {kind!r}; expected one of {KINDS}")


def _max_rotation(kind: str) -> float:
    # Small rotations only, so a square never turns into a diamond; stars and circles are symmetric.
    return {"circle": 0.0, "star": 36.0}.get(kind, 15.0)


def region_of(x: float, y: float, width: int, height: int | None = None) -> str:
    """The 3x3-grid region name of a pixel position (``"upper left"``, ``"top"``, ..., ``"center"``)."""
    height = width if height is None else height
    col = min(2, max(0, int(3 * x / width)))
    row = min(2, max(0, int(3 * y / height)))
    return REGIONS[row][col]


def position_phrase(x: float, y: float, width: int, height: int | None = None) -> str:
    """``"in the upper left"``, ``"at the top"``, ``"in the center"``, ``"on the right"``, ..."""
    return _REGION_PHRASES[region_of(x, y, width, height)]


def _jitter_colour(rng: np.random.Generator, rgb: RGB, amount: int) -> RGB:
    d = rng.integers(-amount, amount + 1, 3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + d, 0, 255))


def _sample_object_specs(
    rng: np.random.Generator, target: Query, num_targets: int, num_distractors: int
) -> list[tuple[str, str, bool]]:
    """(kind, colour, is_target) for every object to place."""
    colours = list(SHAPE_COLOURS)
    specs = []
    for _ in range(num_targets):
        specs.append((target.kind, target.colour or colours[rng.integers(len(colours))], True))
    other_kinds = [k for k in KINDS if k != target.kind]
    for _ in range(num_distractors):
        if target.colour is not None and rng.random() < 0.5:  # same kind, another colour
            others = [c for c in colours if c != target.colour]
            specs.append((target.kind, others[rng.integers(len(others))], False))
        else:
            specs.append(
                (other_kinds[rng.integers(len(other_kinds))], colours[rng.integers(len(colours))], False)
            )
    return specs


def _try_position(
    rng: np.random.Generator,
    radius: float,
    size: int,
    placed: list[tuple[float, float, float]],
    candidates: int = 96,
) -> tuple[float, float] | None:
    """A random centre at which a disc of `radius` keeps the gap to every placed disc, if one is found."""
    lo, hi = radius + EDGE_MARGIN * size, size - radius - EDGE_MARGIN * size
    xy = rng.uniform(lo, hi, (candidates, 2))
    if placed:
        p = np.array(placed)
        dist = np.hypot(xy[:, None, 0] - p[None, :, 0], xy[:, None, 1] - p[None, :, 1])
        ok = np.all(dist >= p[None, :, 2] + radius + OBJECT_GAP * size, axis=1)
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            return None
        xy = xy[idx]
    return float(xy[0, 0]), float(xy[0, 1])


def _place_objects(
    rng: np.random.Generator, specs: list[tuple[str, str, bool]], size: int
) -> list[ShapeObject]:
    """Place objects without overlap, largest first. A crowded scene shrinks an object by a size bin;
    a distractor that still does not fit is left out; a target never is (the scene is redrawn)."""
    for _ in range(20):
        size_words = [SIZE_ORDER[rng.integers(3)] for _ in specs]
        order = sorted(range(len(specs)), key=lambda i: -SIZE_ORDER.index(size_words[i]))
        placed: list[tuple[float, float, float]] = []
        objects: dict[int, ShapeObject] = {}
        failed = False
        for i in order:
            kind, colour, is_target = specs[i]
            level = SIZE_ORDER.index(size_words[i])
            while True:
                word = SIZE_ORDER[level]
                radius = rng.uniform(*SIZE_BINS[word]) * size
                pos = _try_position(rng, radius, size, placed)
                if pos is not None or level == 0:
                    break
                level -= 1
            if pos is None:
                if is_target:
                    failed = True
                    break
                continue
            placed.append((pos[0], pos[1], radius))
            rot = _max_rotation(kind)
            objects[i] = ShapeObject(
                kind=kind,
                colour=colour,
                rgb=_jitter_colour(rng, SHAPE_COLOURS[colour], COLOUR_JITTER),
                size=word,
                x=round(pos[0], 2),
                y=round(pos[1], 2),
                radius=round(radius, 2),
                angle=round(float(rng.uniform(-rot, rot)), 1) if rot else 0.0,
            )
        if not failed:
            return [objects[i] for i in sorted(objects)]
    raise RuntimeError(f"could not place {len(specs)} objects in a {size}px image")


def sample_scene(
    rng: np.random.Generator,
    size: int = 224,
    *,
    num_targets: int | None = None,
    num_distractors: int | None = None,
) -> ShapeScene:
    """Draw a random scene: 0..10 objects matching a target query plus 0..5 distractors that do not.

    The query is a kind (``"triangles"``: targets in random colours) or, half the time, a colour and a
    kind (``"red circles"``: distractors may then be circles of other colours)."""
    if num_targets is None:
        num_targets = int(rng.integers(0, MAX_TARGETS + 1))
    if num_distractors is None:
        num_distractors = int(rng.integers(0, MAX_DISTRACTORS + 1))
    kind = KINDS[rng.integers(len(KINDS))]
    colour = list(SHAPE_COLOURS)[rng.integers(len(SHAPE_COLOURS))] if rng.random() < 0.5 else None
    target = Query(kind, colour)
    specs = _sample_object_specs(rng, target, num_targets, num_distractors)
    objects = _place_objects(rng, specs, size)
    # Shuffle so that the object order (and the order of points) carries no information.
    objects = [objects[i] for i in rng.permutation(len(objects))]
    bg_names = list(BACKGROUND_COLOURS)
    first = bg_names[rng.integers(len(bg_names))]
    background: tuple[str, ...] = (first,)
    if rng.random() < 0.5:
        background = (first, [b for b in bg_names if b != first][rng.integers(len(bg_names) - 1)])
    return ShapeScene(
        size=size,
        background=background,
        gradient_angle=round(float(rng.uniform(0, 360)), 1),
        noise=_sample_noise(rng),
        objects=tuple(objects),
        target=target,
    )


def _sample_noise(rng: np.random.Generator) -> int:
    return 0 if rng.random() < 0.4 else int(rng.integers(1, 5))


def _background(size: int, colours: Sequence[RGB], angle_deg: float) -> np.ndarray:
    """A solid or linear-gradient float32 [size, size, 3] canvas."""
    c0 = np.asarray(colours[0], np.float32)
    if len(colours) == 1:
        return np.broadcast_to(c0, (size, size, 3)).copy()
    c1 = np.asarray(colours[1], np.float32)
    a = math.radians(angle_deg)
    coords = np.arange(size, dtype=np.float32) / max(size - 1, 1) - 0.5
    t = coords[None, :] * math.cos(a) + coords[:, None] * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c0 + (c1 - c0) * t[..., None]


def _add_noise(image: Image.Image, rng: np.random.Generator, amount: int) -> Image.Image:
    """Uniform luminance noise in [-amount, amount] per pixel (the same on R, G and B)."""
    if amount <= 0:
        return image
    noise = rng.integers(-amount, amount + 1, (image.height, image.width, 1), dtype=np.int16)
    pixels = np.asarray(image, dtype=np.int16) + noise
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, fill: Any) -> None:
    if obj.kind == "circle":
        r = obj.radius * 0.92
        draw.ellipse([obj.x - r, obj.y - r, obj.x + r, obj.y + r], fill=fill)
    else:
        draw.polygon(obj.polygon(), fill=fill)


def draw_scene(scene: ShapeScene, rng: np.random.Generator | None = None) -> Image.Image:
    """Render a scene to an RGB image (noise drawn from `rng`; none without one)."""
    canvas = _background(scene.size, [BACKGROUND_COLOURS[b] for b in scene.background], scene.gradient_angle)
    image = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, obj.rgb)
    return _add_noise(image, rng, scene.noise) if rng is not None else image


def object_label_map(objects: Sequence[ShapeObject], size: int) -> np.ndarray:
    """[size, size] int32: ``i + 1`` where object ``i`` is drawn, 0 elsewhere (exactly the drawn pixels)."""
    labels = Image.new("I", (size, size), 0)
    draw = ImageDraw.Draw(labels)
    for i, obj in enumerate(objects):
        _draw_object(draw, obj, i + 1)
    return np.asarray(labels, dtype=np.int32)


def render_shapes(
    rng: np.random.Generator, size: int = 224, **scene_kwargs: Any
) -> tuple[Image.Image, ShapeScene]:
    """Sample and draw a scene of coloured shapes: ``(image, scene)``; ``scene.objects`` lists every
    object, ``scene.target`` the main counting / pointing query."""
    scene = sample_scene(rng, size, **scene_kwargs)
    return draw_scene(scene, rng), scene


# ----------------------------------------------------------------------------------------------
# Scene text: captions, transcripts, QA


def _background_phrase(background: Sequence[str]) -> str:
    if len(background) == 1:
        return f"plain {background[0]}"
    return f"{background[0]} to {background[1]} gradient"


def _region_sort_key(region: str) -> int:
    return [r for row in REGIONS for r in row].index(region)


def _object_groups(scene: ShapeScene) -> list[tuple[str, str, str, str, int]]:
    """(region, size, colour, kind, n) groups of identical descriptions, in reading order of regions."""
    counts: dict[tuple[str, str, str, str], int] = {}
    for o in scene.objects:
        key = (region_of(o.x, o.y, scene.size), o.size, o.colour, o.kind)
        counts[key] = counts.get(key, 0) + 1
    keys = sorted(counts, key=lambda k: (_region_sort_key(k[0]), -SIZE_ORDER.index(k[1]), k[3], k[2]))
    return [(*k, counts[k]) for k in keys]


def describe_group(size: str, colour: str, kind: str, n: int, region: str | None = None) -> str:
    """``"a large red circle in the upper left"`` / ``"two small blue stars at the top"``."""
    article = "an" if size[0] in "aeiou" else "a"
    if n == 1:
        head = f"{article} {size} {colour} {kind}"
    else:
        head = f"{number_word(n)} {size} {colour} {plural(kind)}"
    return f"{head} {_REGION_PHRASES[region]}" if region else head


def _join(items: Sequence[str], conj: str = "and") -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {conj} " + items[-1]


def _kind_summary(objects: Sequence[ShapeObject]) -> str:
    counts: dict[str, int] = {}
    for o in objects:
        counts[o.kind] = counts.get(o.kind, 0) + 1
    parts = [f"{counts[k]} {k if counts[k] == 1 else plural(k)}" for k in KINDS if k in counts]
    return _join(parts)


def scene_caption(scene: ShapeScene) -> str:
    """A dense caption that names every object with its size, colour and position, then the totals."""
    bg = _background_phrase(scene.background)
    n = len(scene.objects)
    if n == 0:
        return f"An empty image with a {bg} background. There are no shapes in it."
    intro = (
        f"A simple digital image of {number_word(n)} coloured shape{'s' if n > 1 else ''} "
        f"on a {bg} background."
    )
    items = [
        describe_group(size, colour, kind, k, region)
        for region, size, colour, kind, k in _object_groups(scene)
    ]
    verb = "is" if items[0].startswith(("a ", "an ")) else "are"
    body = f"There {verb} {_join(items)}."
    total = (
        f"In total there {'is' if n == 1 else 'are'} {n} shape{'s' if n > 1 else ''}: "
        f"{_kind_summary(scene.objects)}."
    )
    return f"{intro} {body} {total}"


def scene_transcript(scene: ShapeScene, rng: np.random.Generator) -> str:
    """A spoken-style description (PixMo-Cap ``transcripts``): same facts, looser words, random order."""
    bg = _background_phrase(scene.background)
    groups = _object_groups(scene)
    if not groups:
        return f"Okay, so this one is just a {bg} background, um, there's nothing else in it."
    order = rng.permutation(len(groups))
    items = []
    for i in order:
        region, size, colour, kind, k = groups[i]
        items.append(describe_group(size, colour, kind, k, region))
    n = len(scene.objects)
    return (
        f"Okay, so there's a {bg} background, and I can see {_join(items, 'and then')}. "
        f"So that's {number_word(n)} shape{'s' if n > 1 else ''} overall."
    )


def _count_sentence(n: int, noun_singular: str, noun_plural: str) -> str:
    if n == 0:
        return f"There are no {noun_plural}."
    return f"There is 1 {noun_singular}." if n == 1 else f"There are {n} {noun_plural}."


def _qa_count_colour(scene: ShapeScene, rng: np.random.Generator) -> tuple[str, str] | None:
    present = sorted({o.colour for o in scene.objects})
    pool = present if present and rng.random() < 0.7 else list(SHAPE_COLOURS)
    c = pool[rng.integers(len(pool))]
    n = sum(o.colour == c for o in scene.objects)
    return f"How many {c} shapes are there?", _count_sentence(n, f"{c} shape", f"{c} shapes")


def _qa_count_kind(scene: ShapeScene, rng: np.random.Generator) -> tuple[str, str] | None:
    present = sorted({o.kind for o in scene.objects})
    pool = present if present and rng.random() < 0.7 else list(KINDS)
    k = pool[rng.integers(len(pool))]
    n = sum(o.kind == k for o in scene.objects)
    return f"How many {plural(k)} are in the image?", _count_sentence(n, k, plural(k))


def _qa_colour_of(scene: ShapeScene, rng: np.random.Generator) -> tuple[str, str] | None:
    unique = [k for k in KINDS if sum(o.kind == k for o in scene.objects) == 1]
    if not unique:
        return None
    k = unique[rng.integers(len(unique))]
    obj = next(o for o in scene.objects if o.kind == k)
    return f"What colour is the {k}?", f"The {k} is {obj.colour}."


def _qa_where(scene: ShapeScene, rng: np.random.Generator) -> tuple[str, str] | None:
    keys = [(o.colour, o.kind) for o in scene.objects]
    unique = [o for o, key in zip(scene.objects, keys) if keys.count(key) == 1]
    if not unique:
        return None
    o = unique[rng.integers(len(unique))]
    return (
        f"Where is the {o.colour} {o.kind}?",
        f"The {o.colour} {o.kind} is {position_phrase(o.x, o.y, scene.size)} of the image.",
    )


def _qa_what_in_region(scene: ShapeScene, rng: np.random.Generator) -> tuple[str, str] | None:
    regions = [region_of(o.x, o.y, scene.size) for o in scene.objects]
    unique = [r for r in dict.fromkeys(regions) if regions.count(r) == 1]
    if not unique:
        return None
    r = unique[rng.integers(len(unique))]
    o = scene.objects[regions.index(r)]
    answer = describe_group(o.size, o.colour, o.kind, 1)
    return f"What shape is {_REGION_PHRASES[r]} of the image?", answer[0].upper() + answer[1:] + "."


def _qa_exists(scene: ShapeScene, rng: np.random.Generator) -> tuple[str, str] | None:
    if scene.objects and rng.random() < 0.5:
        o = scene.objects[rng.integers(len(scene.objects))]
        colour, kind = o.colour, o.kind
    else:
        colour = list(SHAPE_COLOURS)[rng.integers(len(SHAPE_COLOURS))]
        kind = KINDS[rng.integers(len(KINDS))]
    n = len(scene.matching(Query(kind, colour)))
    question = f"Is there {'an' if colour[0] in 'aeiou' else 'a'} {colour} {kind} in the image?"
    if n == 0:
        return question, f"No, there is no {colour} {kind}."
    return question, "Yes, there is one." if n == 1 else f"Yes, there are {n} {colour} {plural(kind)}."


def _qa_total(scene: ShapeScene, rng: np.random.Generator) -> tuple[str, str] | None:
    return "How many shapes are there in total?", _count_sentence(len(scene.objects), "shape", "shapes")


def _qa_background(scene: ShapeScene, rng: np.random.Generator) -> tuple[str, str] | None:
    if len(scene.background) == 1:
        return "What colour is the background?", f"The background is {scene.background[0]}."
    return (
        "What colour is the background?",
        f"The background is a gradient from {scene.background[0]} to {scene.background[1]}.",
    )


_QA_BUILDERS: tuple[Callable[[ShapeScene, np.random.Generator], tuple[str, str] | None], ...] = (
    _qa_count_colour,
    _qa_count_kind,
    _qa_colour_of,
    _qa_where,
    _qa_what_in_region,
    _qa_exists,
    _qa_total,
    _qa_background,
)


def scene_qa(scene: ShapeScene, rng: np.random.Generator, num: int = 2) -> list[tuple[str, str]]:
    """Up to `num` (question, answer) pairs of different types, each with one unambiguous answer."""
    pairs: list[tuple[str, str]] = []
    for i in rng.permutation(len(_QA_BUILDERS)):
        if len(pairs) == num:
            break
        qa = _QA_BUILDERS[i](scene, rng)
        if qa is not None:
            pairs.append(qa)
    return pairs


def _secondary_query(scene: ShapeScene, rng: np.random.Generator) -> Query:
    """Another query for the same image: a present kind (or colour + kind) other than the target's."""
    present = {Query(o.kind) for o in scene.objects} | {Query(o.kind, o.colour) for o in scene.objects}
    options = sorted(present, key=lambda q: q.label)
    options = [q for q in options if q != scene.target]
    if options and rng.random() < 0.8:
        return options[rng.integers(len(options))]
    colour = list(SHAPE_COLOURS)[rng.integers(len(SHAPE_COLOURS))] if rng.random() < 0.5 else None
    return Query(KINDS[rng.integers(len(KINDS))], colour)


# ==============================================================================================
# Clocks

_FACE_LIGHT: dict[str, RGB] = {
    "white": (248, 248, 248),
    "cream": (250, 243, 220),
    "light grey": (218, 218, 218),
    "pale blue": (210, 228, 248),
    "pale yellow": (250, 246, 200),
    "pale green": (214, 240, 214),
}
_FACE_DARK: dict[str, RGB] = {
    "black": (22, 22, 22),
    "navy": (20, 30, 80),
    "dark green": (20, 70, 40),
    "dark grey": (60, 60, 64),
    "maroon": (100, 20, 30),
}
_HANDS_ON_LIGHT: dict[str, RGB] = {
    "black": (15, 15, 15),
    "dark grey": (60, 60, 60),
    "navy": (25, 35, 110),
    "dark brown": (80, 45, 20),
    "dark green": (15, 80, 35),
}
_HANDS_ON_DARK: dict[str, RGB] = {
    "white": (245, 245, 245),
    "light grey": (200, 200, 200),
    "gold": (230, 190, 60),
}
_SECOND_HAND: dict[str, RGB] = {
    "red": (225, 30, 30),
    "orange": (250, 140, 20),
    "blue": (40, 110, 235),
    "cyan": (60, 200, 230),
}
_CLOCK_BACKGROUNDS: dict[str, RGB] = {
    "white": (250, 250, 250),
    "light grey": (205, 205, 205),
    "grey": (140, 140, 140),
    "dark grey": (60, 60, 60),
    "beige": (230, 220, 195),
    "sky blue": (150, 200, 240),
    "navy": (25, 35, 90),
    "teal": (30, 130, 130),
    "olive": (120, 120, 40),
    "maroon": (110, 30, 40),
    "peach": (250, 200, 165),
    "mint": (185, 235, 205),
    "lavender": (210, 200, 240),
    "brown": (120, 80, 50),
    "yellow": (240, 220, 90),
}
_ROMAN = ("XII", "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI")


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:  # Pillow >= 10.1 with FreeType: the bundled scalable font
        return ImageFont.load_default(size=max(size, 6))
    except (TypeError, ImportError):  # older Pillow: the fixed-size bitmap font
        return ImageFont.load_default()


def _pick(rng: np.random.Generator, table: dict[str, RGB], exclude: Sequence[str] = ()) -> str:
    names = [n for n in table if n not in exclude]
    return names[rng.integers(len(names))]


def _pick_second_hand(rng: np.random.Generator, face: RGB, hands: Sequence[RGB]) -> str:
    """A second-hand colour that stands out from the face and from the other two hands."""
    far = [
        n
        for n, rgb in _SECOND_HAND.items()
        if math.dist(rgb, face) >= 190 and all(math.dist(rgb, h) >= 120 for h in hands)
    ]
    return far[rng.integers(len(far))]


def format_time(hour: int, minute: int, second: int | None = None) -> str:
    """``"3:07"`` or ``"3:07:45"`` (12-hour clock, no leading zero on the hour, as PixMo-Clocks)."""
    return f"{hour}:{minute:02d}" if second is None else f"{hour}:{minute:02d}:{second:02d}"


def hand_angles(hour: int, minute: int, second: int | None) -> tuple[float, float, float | None]:
    """Clockwise degrees from 12 o'clock of the hour, minute and second hands (hands move continuously)."""
    minutes = minute + (second or 0) / 60
    return (hour % 12) * 30 + minutes * 0.5, minutes * 6, None if second is None else second * 6.0


def _sample_clock(rng: np.random.Generator, size: int) -> dict[str, Any]:
    """All the random choices of one clock (the info dict returned by :func:`render_clock`)."""
    radius = float(rng.uniform(0.30, 0.46)) * size
    margin = 0.02 * size
    cx = float(rng.uniform(radius + margin, size - radius - margin))
    cy = float(rng.uniform(radius + margin, size - radius - margin))
    dark = rng.random() < 0.25
    face = _pick(rng, _FACE_DARK if dark else _FACE_LIGHT)
    face_rgb = (_FACE_DARK | _FACE_LIGHT)[face]
    hand_table = _HANDS_ON_DARK if dark else _HANDS_ON_LIGHT
    hour_colour = _pick(rng, hand_table)
    minute_colour = hour_colour if rng.random() < 0.7 else _pick(rng, hand_table, exclude=[hour_colour])
    ticks = ("none", "hours", "minutes")[rng.integers(3)]
    numerals = ("none", "quarters", "all", "roman")[rng.integers(4)]
    if ticks == "none" and numerals == "none":
        numerals = "all"
    has_second = rng.random() < 0.4
    hands = [hand_table[hour_colour], hand_table[minute_colour]]
    second_colour = _pick_second_hand(rng, face_rgb, hands) if has_second else None
    return {
        "hour": int(rng.integers(1, 13)),
        "minute": int(rng.integers(0, 60)),
        "second": int(rng.integers(0, 60)) if has_second else None,
        "size": size,
        "center": (round(cx, 2), round(cy, 2)),
        "radius": round(radius, 2),
        "shape": "round" if rng.random() < 0.7 else "square",
        "face": face,
        "face_rgb": face_rgb,
        "border_width": round(float(rng.uniform(0.02, 0.08)) * radius, 2),
        "border_rgb": tuple(int(v) for v in rng.integers(0, 200, 3)),
        "ticks": ticks,
        "tick_style": "lines" if rng.random() < 0.7 else "dots",
        "numerals": numerals,
        "hour_colour": hour_colour,
        "hour_rgb": hand_table[hour_colour],
        "minute_colour": minute_colour,
        "minute_rgb": hand_table[minute_colour],
        "second_colour": second_colour,
        "second_rgb": _SECOND_HAND[second_colour] if has_second else None,
        "hour_length": round(float(rng.uniform(0.45, 0.55)) * radius, 2),
        "hour_width": round(max(3.0, float(rng.uniform(0.08, 0.11)) * radius), 2),
        "minute_length": round(float(rng.uniform(0.72, 0.85)) * radius, 2),
        "minute_width": round(max(2.0, float(rng.uniform(0.03, 0.045)) * radius), 2),
        "second_length": round(float(rng.uniform(0.88, 0.96)) * radius, 2),
        "second_width": round(max(2.0, 0.015 * radius), 2),
        "hand_style": "taper" if rng.random() < 0.4 else "rect",
        "background": tuple(_pick(rng, _CLOCK_BACKGROUNDS) for _ in range(1 if rng.random() < 0.5 else 2)),
        "gradient_angle": round(float(rng.uniform(0, 360)), 1),
        "noise": _sample_noise(rng),
    }


def _polar(cx: float, cy: float, angle_deg: float, r: float) -> tuple[float, float]:
    a = math.radians(angle_deg)
    return cx + r * math.sin(a), cy - r * math.cos(a)


def _hand_polygon(
    cx: float, cy: float, angle: float, length: float, width: float, tail: float, taper: bool
) -> list[tuple[float, float]]:
    a = math.radians(angle)
    d = np.array([math.sin(a), -math.cos(a)])
    n = np.array([math.cos(a), math.sin(a)])
    c = np.array([cx, cy])
    tip_half = width * (0.25 if taper else 0.5)
    pts = [
        c - d * tail + n * width / 2,
        c + d * length + n * tip_half,
        c + d * length - n * tip_half,
        c - d * tail - n * width / 2,
    ]
    return [(float(p[0]), float(p[1])) for p in pts]


def _draw_dial(draw: ImageDraw.ImageDraw, info: dict[str, Any]) -> None:
    (cx, cy), r = info["center"], info["radius"]
    ink = info["minute_rgb"]
    if info["ticks"] != "none":
        for i in range(60):
            if i % 5 and info["ticks"] != "minutes":
                continue
            big = i % 5 == 0
            if info["tick_style"] == "dots":
                dot = (0.035 if big else 0.015) * r
                px, py = _polar(cx, cy, i * 6, 0.9 * r)
                draw.ellipse([px - dot, py - dot, px + dot, py + dot], fill=ink)
            else:
                length, width = (0.12 * r, max(1.0, 0.035 * r)) if big else (0.05 * r, max(1.0, 0.012 * r))
                draw.line(
                    [_polar(cx, cy, i * 6, 0.95 * r - length), _polar(cx, cy, i * 6, 0.95 * r)],
                    fill=ink,
                    width=round(width),
                )
    if info["numerals"] != "none":
        quarters = info["numerals"] == "quarters"
        font = _font(round((0.24 if quarters else 0.17) * r))
        ring = (0.70 if info["ticks"] != "none" else 0.80) * r
        for h in range(12):
            if quarters and h % 3:
                continue
            text = _ROMAN[h] if info["numerals"] == "roman" else str(h or 12)
            x, y = _polar(cx, cy, h * 30, ring)
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)  # centre the ink itself
            draw.text((x - (left + right) / 2, y - (top + bottom) / 2), text, fill=ink, font=font)


def draw_clock(info: dict[str, Any], rng: np.random.Generator | None = None) -> Image.Image:
    """Render the clock described by `info` (from :func:`render_clock`); noise drawn from `rng`."""
    size = info["size"]
    bg = [_CLOCK_BACKGROUNDS[b] for b in info["background"]]
    image = Image.fromarray(_background(size, bg, info["gradient_angle"]).round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    (cx, cy), r = info["center"], info["radius"]
    box = [cx - r, cy - r, cx + r, cy + r]
    border = max(1, round(info["border_width"]))
    if info["shape"] == "round":
        draw.ellipse(box, fill=info["face_rgb"], outline=info["border_rgb"], width=border)
    else:
        draw.rounded_rectangle(
            box, radius=0.15 * r, fill=info["face_rgb"], outline=info["border_rgb"], width=border
        )
    _draw_dial(draw, info)
    hour_angle, minute_angle, second_angle = hand_angles(info["hour"], info["minute"], info["second"])
    taper = info["hand_style"] == "taper"
    draw.polygon(
        _hand_polygon(cx, cy, hour_angle, info["hour_length"], info["hour_width"], 0.1 * r, taper),
        fill=info["hour_rgb"],
    )
    draw.polygon(
        _hand_polygon(cx, cy, minute_angle, info["minute_length"], info["minute_width"], 0.1 * r, taper),
        fill=info["minute_rgb"],
    )
    if second_angle is not None:
        draw.polygon(
            _hand_polygon(cx, cy, second_angle, info["second_length"], info["second_width"], 0.2 * r, False),
            fill=info["second_rgb"],
        )
    cap = 0.05 * r
    cap_rgb = info["second_rgb"] if info["second"] is not None else info["minute_rgb"]
    draw.ellipse([cx - cap, cy - cap, cx + cap, cy + cap], fill=cap_rgb)
    return _add_noise(image, rng, info["noise"]) if rng is not None else image


def render_clock(rng: np.random.Generator, size: int = 224) -> tuple[Image.Image, dict[str, Any]]:
    """A random analog clock: ``(image, info)``. ``info`` has the time (``hour`` 1-12, ``minute``,
    ``second`` or None when there is no second hand) and every drawing choice (centre, radius, hand
    lengths / widths / colours, face, ticks, numerals, background)."""
    info = _sample_clock(rng, size)
    return draw_clock(info, rng), info


def _hour_position(hour: int, minute: int) -> str:
    nxt = hour % 12 + 1
    if minute < 5:
        return f"at the {hour}"
    if minute >= 55:
        return f"just before the {nxt}"
    return f"between the {hour} and the {nxt}"


def _minute_position(minute: int) -> str:
    text = f"at {minute} minute{'s' if minute != 1 else ''}"
    return text + (f", on the {minute // 5 or 12}" if minute % 5 == 0 else "")


def clock_caption(info: dict[str, Any]) -> str:
    """Dense caption of a clock: face, dial, hands (with their lengths) and the time it shows."""
    bg = info["background"]
    bg_text = f"plain {bg[0]}" if len(bg) == 1 else f"{bg[0]} to {bg[1]} gradient"
    dial = []
    if info["numerals"] != "none":
        dial.append(
            {
                "all": "Arabic numerals 1 to 12",
                "quarters": "the numerals 12, 3, 6 and 9",
                "roman": "Roman numerals",
            }[info["numerals"]]
        )
    if info["ticks"] != "none":
        what = "hour" if info["ticks"] == "hours" else "hour and minute"
        dial.append(f"{what} {'dots' if info['tick_style'] == 'dots' else 'tick marks'}")
    where = position_phrase(*info["center"], info["size"])
    hands = (
        f"a short, thick {info['hour_colour']} hour hand and a long, thin {info['minute_colour']} minute hand"
    )
    if info["second"] is not None:
        hands = hands.replace(" and a long", ", a long")
        hands += f" and a very thin {info['second_colour']} second hand"
    h, m, s = info["hour"], info["minute"], info["second"]
    reading = f"The hour hand points {_hour_position(h, m)} and the minute hand points {_minute_position(m)}"
    if s is not None:
        reading += f"; the second hand is at {s} second{'s' if s != 1 else ''}"
    return (
        f"An analog clock with a {info['shape']} {info['face']} face and {_join(dial)}, "
        f"{where} of the image, on a {bg_text} background. It has {hands}. {reading}. "
        f"The time shown is {format_time(h, m, s)}."
    )


def clock_transcript(info: dict[str, Any]) -> str:
    """A spoken-style description of the clock."""
    h, m, s = info["hour"], info["minute"], info["second"]
    return (
        f"So this is a {info['face']} analog clock, um, the little hand is {_hour_position(h, m)} and "
        f"the big hand is {_minute_position(m)}, so it says {format_time(h, m, s)}."
    )


# ==============================================================================================
# Writing the data set


_FAMILIES = {"shapes": 1, "clocks": 2, "shape_text": 3, "counts": 4}


def example_rng(seed: int, split: str, family: str, index: int) -> np.random.Generator:
    """The generator of one example: seeded by (seed, split name, family, index), nothing else."""
    split_key = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:4], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, split_key, _FAMILIES[family], index]))


def balanced_count(seed: int, split: str, index: int) -> int:
    """Target count of scene `index`: every block of 11 scenes holds each of 0..10 once."""
    block, pos = divmod(index, MAX_TARGETS + 1)
    return int(example_rng(seed, split, "counts", block).permutation(MAX_TARGETS + 1)[pos])


def synthetic_scene(
    seed: int, index: int, *, split: str = "train", image_size: int = 224
) -> tuple[Image.Image, ShapeScene]:
    """Scene `index` of a :func:`write_synthetic` call, in memory (the same pixels as its file)."""
    rng = example_rng(seed, split, "shapes", index)
    return render_shapes(rng, image_size, num_targets=balanced_count(seed, split, index))


def synthetic_clock(
    seed: int, index: int, *, split: str = "train", image_size: int = 224
) -> tuple[Image.Image, dict[str, Any]]:
    """Clock `index` of a :func:`write_synthetic` call, in memory (the same pixels as its file)."""
    return render_clock(example_rng(seed, split, "clocks", index), image_size)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, "PNG", compress_level=1)
    elif fmt == "jpeg":
        image.save(buf, "JPEG", quality=92)
    else:
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {fmt!r}")
    return buf.getvalue()


def _write_image(image: Image.Image, directory: Path, stem: str, fmt: str) -> tuple[str, str]:
    """Write `image` as ``{stem}_{sha[:12]}.{ext}`` and return its (file:// URL, sha256 of the bytes).

    The content hash in the name gives every distinct image its own URL, so URL-keyed image caches
    (the downloader's, the original's) never serve a stale image after a re-run with other settings."""
    data = _encode(image, fmt)
    sha = hashlib.sha256(data).hexdigest()
    path = directory / f"{stem}_{sha[:12]}.{'png' if fmt == 'png' else 'jpg'}"
    if not (path.is_file() and path.stat().st_size == len(data)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path.resolve().as_uri(), sha


def _points(objects: Sequence[ShapeObject]) -> list[dict[str, float]]:
    return [{"x": o.x, "y": o.y} for o in objects]


def _point_queries(scene: ShapeScene, rng: np.random.Generator, n: int) -> list[Query]:
    """The main query, a secondary one, then other labels present in the scene (n in all at most)."""
    queries = [scene.target] + ([_secondary_query(scene, rng)] if n >= 2 else [])
    if n > 2:
        present = {Query(o.kind) for o in scene.objects} | {Query(o.kind, o.colour) for o in scene.objects}
        rest = sorted(present - set(queries), key=lambda q: q.label)
        queries += [rest[k] for k in rng.permutation(len(rest))[: n - 2]]
    return queries


def _scene_rows(
    scene: ShapeScene,
    url: str,
    sha: str,
    rng: np.random.Generator,
    qa_per_image: int,
    point_queries: int = 2,
) -> dict[str, list[dict[str, Any]]]:
    """The rows of every dataset for one scene (pixmo_points_eval without its masks)."""
    ref = {"image_url": url, "image_sha256": sha}
    targets = scene.matching(scene.target)
    points_rows = []
    for query in _point_queries(scene, rng, point_queries):
        matched = scene.matching(query)
        method = "pointing" if rng.random() < 0.5 else "counting"
        points_rows.append(
            {
                **ref,
                "points": _points(matched),
                "count": len(matched),
                "label": query.label,
                "collection_method": method,
            }
        )
    return {
        "pixmo_cap": [
            {"image_url": url, "caption": scene_caption(scene), "transcripts": [scene_transcript(scene, rng)]}
        ],
        "pixmo_points": points_rows,
        "pixmo_count": [
            {**ref, "count": len(targets), "points": _points(targets), "label": scene.target.label}
        ],
        "pixmo_ask_model_anything": [
            {**ref, "question": q, "answer": a} for q, a in scene_qa(scene, rng, qa_per_image)
        ],
        "pixmo_points_eval": [
            {**ref, "points": _points(targets), "label": scene.target.label, "count": len(targets)}
        ],
    }


def _clock_rows(info: dict[str, Any], url: str, sha: str) -> dict[str, list[dict[str, Any]]]:
    return {
        "pixmo_cap": [
            {"image_url": url, "caption": clock_caption(info), "transcripts": [clock_transcript(info)]}
        ],
        "pixmo_clocks": [
            {
                "image_url": url,
                "image_sha256": sha,
                "hour": info["hour"],
                "minute": info["minute"],
                "second": info["second"],
            }
        ],
    }


def _schemas() -> dict[str, Any]:
    import pyarrow as pa

    def points(t: Any) -> Any:
        return pa.list_(pa.struct([("x", t), ("y", t)]))

    s, sha = pa.string(), ("image_sha256", pa.string())
    return {
        "pixmo_cap": pa.schema([("image_url", s), ("caption", s), ("transcripts", pa.list_(s))]),
        "pixmo_points": pa.schema(
            [
                ("image_url", s),
                sha,
                ("points", points(pa.float64())),
                ("count", pa.int64()),
                ("label", s),
                ("collection_method", s),
            ]
        ),
        "pixmo_count": pa.schema(
            [("image_url", s), sha, ("count", pa.int32()), ("points", points(pa.float32())), ("label", s)]
        ),
        "pixmo_ask_model_anything": pa.schema([("image_url", s), sha, ("question", s), ("answer", s)]),
        "pixmo_clocks": pa.schema(
            [("image_url", s), sha, ("hour", pa.int32()), ("minute", pa.int32()), ("second", pa.int32())]
        ),
        "pixmo_points_eval": pa.schema(
            [
                ("image_url", s),
                sha,
                ("points", points(pa.float64())),
                ("masks", pa.list_(pa.list_(pa.list_(pa.bool_())))),
                ("label", s),
                ("count", pa.int64()),
            ]
        ),
    }


def _masks_array(all_masks: list[list[np.ndarray]], size: int) -> Any:
    """list<list<list<bool>>> from per-row lists of [size, size] boolean masks, without Python lists."""
    import pyarrow as pa

    flat = [m for masks in all_masks for m in masks]
    values = pa.array(np.concatenate([m.reshape(-1) for m in flat]) if flat else np.zeros(0, bool))
    rows = pa.ListArray.from_arrays(pa.array(np.arange(len(flat) * size + 1, dtype=np.int32) * size), values)
    masks = pa.ListArray.from_arrays(pa.array(np.arange(len(flat) + 1, dtype=np.int32) * size), rows)
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in all_masks])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), masks)


def _write_parquet(rows: list[dict[str, Any]], schema: Any, path: Path, masks: Any = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {f.name: pa.array([r[f.name] for r in rows], type=f.type) for f in schema if f.name != "masks"}
    if masks is not None:
        columns["masks"] = masks
    table = pa.table([columns[f.name] for f in schema], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Dictionary encoding and statistics only slow the (large, boolean) masks column down.
    options = {"use_dictionary": False, "write_statistics": False} if masks is not None else {}
    pq.write_table(table, tmp, compression="zstd", **options)
    tmp.replace(path)


def read_points_eval(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``pixmo_points_eval`` file with ``masks`` as one bool array ``[n_points, H, W]`` per row
    (far faster than ``to_pylist`` on the nested lists; all images of one file share their size)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    masks = table.column("masks").combine_chunks()
    rows = table.drop_columns(["masks"]).to_pylist()
    per_row = masks.value_lengths().to_numpy(zero_copy_only=False).astype(int)
    flat = masks.flatten()  # one entry per mask, each a list of pixel rows
    pixels = flat.flatten().flatten().to_numpy(zero_copy_only=False).astype(bool)
    height = int(flat.value_lengths()[0].as_py()) if len(flat) else 0
    width = pixels.size // max(len(flat) * height, 1)
    stacked = pixels.reshape(len(flat), height, width)
    offsets = np.concatenate([[0], np.cumsum(per_row)])
    for row, start, stop in zip(rows, offsets[:-1], offsets[1:]):
        row["masks"] = stacked[start:stop]
    return rows


def write_synthetic(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    *,
    image_size: int = 224,
    split: str = "train",
    num_clocks: int | None = None,
    qa_per_image: int = 2,
    point_queries: int = 2,
    image_format: str = "png",
    eval_masks: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Render `num_images` shape scenes and `num_clocks` (default `num_images`) clocks of `image_size`
    pixels and write them with one parquet file per PixMo dataset (layout in the module docstring).

    Per scene: one pixmo_cap row, `point_queries` pixmo_points rows (the balanced main query, a second
    query about the same image, then other labels present in it, as long as there are any; each
    row's collection_method ``"pointing"`` or ``"counting"`` at random; rows of one image are packed
    into one training example, as PixMo-Points' are), one
    pixmo_count row (main query), `qa_per_image` pixmo_ask_model_anything rows and, with `eval_masks`
    (default: any split but ``"train"``), one pixmo_points_eval row; per clock: one pixmo_cap row and
    one pixmo_clocks row. A held-out set is the same call with another `split` name.

    Returns ``{dataset: {"path": parquet file, "rows": n}}`` plus ``"images": {"path": dir, "rows": n}``.
    """
    if point_queries < 1:
        raise ValueError(f"point_queries must be >= 1 (the main query), got {point_queries}")
    if num_images < 0 or (num_clocks is not None and num_clocks < 0):
        raise ValueError(f"image counts must be >= 0, got num_images={num_images}, num_clocks={num_clocks}")
    if not split or "/" in split or "\\" in split or split.startswith("."):
        raise ValueError(f"split must be a plain name like 'train' or 'validation', got {split!r}")
    num_clocks = num_images if num_clocks is None else num_clocks
    eval_masks = split != "train" if eval_masks is None else eval_masks
    out = Path(out_dir)
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in _schemas()}
    eval_mask_rows: list[list[np.ndarray]] = []

    for i in range(num_images):
        image, scene = synthetic_scene(seed, i, split=split, image_size=image_size)
        url, sha = _write_image(image, image_dir, f"shapes_{i:06d}", image_format)
        for name, new in _scene_rows(
            scene, url, sha, example_rng(seed, split, "shape_text", i), qa_per_image, point_queries
        ).items():
            rows[name].extend(new)
        if eval_masks:
            labels = object_label_map(scene.objects, image_size)
            eval_mask_rows.append(
                [labels == k + 1 for k, o in enumerate(scene.objects) if scene.target.matches(o)]
            )
    for i in range(num_clocks):
        image, info = synthetic_clock(seed, i, split=split, image_size=image_size)
        url, sha = _write_image(image, image_dir, f"clock_{i:06d}", image_format)
        for name, new in _clock_rows(info, url, sha).items():
            rows[name].extend(new)

    result: dict[str, dict[str, Any]] = {
        "images": {"path": str(image_dir.resolve()), "rows": num_images + num_clocks}
    }
    for name, schema in _schemas().items():
        if name == "pixmo_points_eval" and not eval_masks:
            continue
        path = out / name / f"{split}.parquet"
        masks = _masks_array(eval_mask_rows, image_size) if name == "pixmo_points_eval" else None
        _write_parquet(rows[name], schema, path, masks)
        result[name] = {"path": str(path.resolve()), "rows": len(rows[name])}
    return result
