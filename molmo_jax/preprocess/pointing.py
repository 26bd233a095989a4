"""Molmo point markup: writing it (training targets), reading it back (model outputs), drawing it.

Coordinates in the markup are percentages of the image width / height (0-100). Formatting follows
the original ``DataFormatter.points_to_text`` / ``format_points`` (MOLMO_SPEC 6.5); parsing reproduces
``olmo/util.py`` ``extract_points`` and ``extract_points_from_point_count`` including their quirks
(golden README section 4), so the evaluation metrics built on it score like the original.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]
PointsLike = Sequence[Sequence[float]] | np.ndarray  # [N, 2] (x, y)

NO_POINTS_ANSWER = "There are none."

# ----------------------------------------------------------------------------------------------
# Formatting


def points_to_percent(points_px: PointsLike, width: float, height: float) -> np.ndarray:
    """Pixel points [N, 2] (x, y) -> percentages of the image size, float64 [N, 2].

    Computed as ``x / (width / 100)`` exactly like the original (``points /= [w/100, h/100]``): it
    differs from ``100 * x / width`` in the last bit for ~30% of inputs, which can flip the 1-decimal
    rounding of :func:`format_points`.
    """
    pts = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    return pts / np.array([width / 100, height / 100], dtype=np.float64)


def _round1(value: float) -> float:
    # numpy's rounding (scale by 10, round half to even, unscale), as the original rounds np.float64
    # values: e.g. 1.05 -> 1.0 where Python's round() gives 1.1.
    return float(np.round(np.float64(value), 1))


def format_points(points_percent: PointsLike, alt: str, text: str) -> str:
    """Point markup for one or more points given in percent.

    One point: ``<point x="61.5" y="40.6" alt="{alt}">{text}</point>``; several:
    ``<points x1=".." y1=".." x2=".." y2=".." alt="{alt}">{text}</points>``. Coordinates are rounded to
    one decimal and the points sorted by ``x * 10000 + y`` (stable). ``alt`` and ``text`` are inserted
    verbatim (no escaping, like the original). Raises ``ValueError`` for zero points: use
    :func:`pointing_answer` / :func:`point_count_answer` for the "There are none." form.
    """
    pts = np.asarray(points_percent, dtype=np.float64).reshape(-1, 2)
    rounded = [(_round1(x), _round1(y)) for x, y in pts]
    if not rounded:
        raise ValueError("format_points needs at least one point")
    rounded.sort(key=lambda p: p[0] * 10000 + p[1])
    if len(rounded) == 1:
        x, y = rounded[0]
        return f'<point x="{x:.1f}" y="{y:.1f}" alt="{alt}">{text}</point>'
    coords = " ".join(f'x{i}="{x:.1f}" y{i}="{y:.1f}"' for i, (x, y) in enumerate(rounded, start=1))
    return f'<points {coords} alt="{alt}">{text}</points>'


def pointing_answer(points_percent: PointsLike, label: str) -> str:
    """Target of a ``pointing`` example: the markup with alt = text = label, or "There are none.".

    The original passes the lower-cased dataset label (``example["label"].lower()``).
    """
    if len(points_percent) == 0:
        return NO_POINTS_ANSWER
    return format_points(points_percent, label, label)


def point_count_answer(points_percent: PointsLike, label: str) -> str:
    """Target of a ``point_count`` example: ``Counting the {markup} shows a total of {N}.``."""
    if len(points_percent) == 0:
        return NO_POINTS_ANSWER
    return f"Counting the {pointing_answer(points_percent, label)} shows a total of {len(points_percent)}."


# ----------------------------------------------------------------------------------------------
# Parsing (olmo/util.py parity). The four pattern families are scanned one after the other, so a
# point matched by two of them (``Click(45.2, 67.8)`` also matches the bare tuple) is returned twice,
# and results are grouped by family rather than by position in the text.

_CLICK_RE = re.compile(r"Click\(([0-9]+\.[0-9]), ?([0-9]+\.[0-9])\)")  # one decimal only
_TUPLE_RE = re.compile(r"\(([0-9]+\.[0-9]),? ?([0-9]+\.[0-9])\)")  # "(x, y)", "(x,y)", "(x y)"
# x then y attributes (any index digits), optional spaces after the opening quote; y-before-x never matches
_XY_ATTR_RE = re.compile(r'x\d*="\s*([0-9]+(?:\.[0-9]+)?)"\s+y\d*="\s*([0-9]+(?:\.[0-9]+)?)"')
_THOUSANDTHS_RE = re.compile(r"(?:\d+|p)\s*=\s*([0-9]{3})\s*,\s*([0-9]{3})")  # p=NNN,NNN / 1=NNN,NNN
_POINT_COUNT_RE = re.compile(r"(\d+\.\d+),\s*(\d+\.\d+)")


def _percent_to_px(x: float, y: float, image_w: float, image_h: float) -> Point | None:
    """Percent -> pixels as ``x / 100 * w``; None (dropped) when a coordinate is above 100."""
    if max(x, y) > 100:
        return None
    return float(x / 100.0 * image_w), float(y / 100.0 * image_h)


def extract_points(text: str, image_w: float, image_h: float) -> list[Point]:
    """Points (pixels) in a model output, as the original ``extract_points`` returns them.

    Order: all ``Click(x, y)`` matches, then ``(x, y)`` tuples (one decimal), then ``x.. y..``
    attribute pairs, then ``p=NNN,NNN`` / ``<digits>=NNN,NNN`` thousandths. Points with a coordinate
    above 100 are dropped; duplicates across families are kept. Never raises on malformed text (a
    non-string gives ``[]``).
    """
    if not isinstance(text, str):
        return []
    percents: list[tuple[float, float]] = []
    for pattern in (_CLICK_RE, _TUPLE_RE, _XY_ATTR_RE):
        percents.extend((float(m.group(1)), float(m.group(2))) for m in pattern.finditer(text))
    percents.extend((int(m.group(1)) / 10.0, int(m.group(2)) / 10.0) for m in _THOUSANDTHS_RE.finditer(text))
    points = (_percent_to_px(x, y, image_w, image_h) for x, y in percents)
    return [p for p in points if p is not None]


def _to_float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:  # \d also matches Unicode digits; guard like the original
        return None


def extract_points_from_point_count(text: str, image_w: float, image_h: float) -> list[Point]:
    """The original ``extract_points_from_point_count``: every ``a.b, c.d`` decimal pair.

    Quirk kept on purpose: the values are multiplied by the image size *without* dividing by 100
    (``(45.2, 67.8)`` on 1280x720 -> ``(57856.0, 48816.0)``); pairs with a value above 100 are dropped.
    Never raises on malformed text (a non-string gives ``[]``).
    """
    if not isinstance(text, str):
        return []
    points: list[Point] = []
    for sx, sy in _POINT_COUNT_RE.findall(text):
        x, y = _to_float(sx), _to_float(sy)
        if x is None or y is None or max(x, y) > 100:
            continue
        points.append((float(x * image_w), float(y * image_h)))
    return points


# ----------------------------------------------------------------------------------------------
# Visualisation


def draw_points(
    image: Image.Image | np.ndarray,
    points_px: PointsLike,
    *,
    radius: float | None = None,
    fill: tuple[int, int, int] = (255, 32, 32),
    outline: tuple[int, int, int] = (255, 255, 255),
    outline_width: int | None = None,
) -> Image.Image:
    """A copy of ``image`` (RGB) with a filled, outlined circle centred on every pixel point.

    ``image`` is a PIL image or a uint8 array [H, W] / [H, W, C]. ``radius`` defaults to 1.5% of the
    longer side (at least 3 px); the outline is about a third of it. Non-finite points are skipped.
    """
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")  # always a new image: the input is never modified
    w, h = img.size
    r = radius if radius is not None else max(3.0, 0.015 * max(w, h))
    ow = outline_width if outline_width is not None else max(1, round(r / 3))
    draw = ImageDraw.Draw(img)
    for x, y in np.asarray(points_px, dtype=np.float64).reshape(-1, 2):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=outline, width=ow)
    return img
