"""Point markup: formatting, parsing parity with olmo/util.py (golden points.json), drawing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import golden_root, require_golden
from PIL import Image

from molmo_jax.preprocess.pointing import (
    NO_POINTS_ANSWER,
    draw_points,
    extract_points,
    extract_points_from_point_count,
    format_points,
    point_count_answer,
    pointing_answer,
    points_to_percent,
)

GOLDEN_FILE = ("pointing", "points.json")


def _golden_case_ids() -> list:
    path = golden_root().joinpath(*GOLDEN_FILE)
    if not path.exists():  # the test itself then fails through require_golden
        return [pytest.param(-1, id="golden-missing")]
    n = len(json.loads(path.read_text())["cases"])
    return [pytest.param(i, id=f"case{i}") for i in range(n)]


def _assert_points_equal(ours, ref, tol=1e-9):
    assert len(ours) == len(ref), (ours, ref)
    for p, q in zip(ours, ref):
        assert len(p) == 2
        assert p[0] == pytest.approx(q[0], abs=tol) and p[1] == pytest.approx(q[1], abs=tol), (ours, ref)


# ---------------------------------------------------------------------------------------------- golden


@pytest.mark.golden
@pytest.mark.parametrize("index", _golden_case_ids())
def test_golden_point_parsing(index):
    data = json.loads(require_golden(*GOLDEN_FILE).read_text())
    case = data["cases"][index]
    text, w, h = case["text"], case["image_w"], case["image_h"]
    _assert_points_equal(extract_points(text, w, h), case["extract_points"])
    _assert_points_equal(extract_points_from_point_count(text, w, h), case["extract_points_from_point_count"])


# ------------------------------------------------------------------------------------------ formatting


def test_format_single_point():
    assert format_points([(61.54, 40.6)], "cat", "cat") == '<point x="61.5" y="40.6" alt="cat">cat</point>'


def test_format_several_points_sorted_by_x_then_y():
    text = format_points([(55.1, 31.7), (10.2, 20.0), (10.2, 5.0)], "coins", "the coins")
    assert text == (
        '<points x1="10.2" y1="5.0" x2="10.2" y2="20.0" x3="55.1" y3="31.7" alt="coins">the coins</points>'
    )


def test_format_rounds_like_numpy():
    # 1.05 is stored as 1.0500000000000000444: numpy's x*10 -> 10.5 -> half-even gives 1.0 (Python: 1.1)
    assert format_points([(1.05, 0.25)], "a", "a") == '<point x="1.0" y="0.2" alt="a">a</point>'


def test_format_sorts_after_rounding():
    # 20.04 and 19.96 both round to 20.0, so the y value decides the order
    text = format_points([(20.04, 9.0), (19.96, 3.0)], "a", "a")
    assert text == '<points x1="20.0" y1="3.0" x2="20.0" y2="9.0" alt="a">a</points>'


def test_format_points_rejects_empty():
    with pytest.raises(ValueError):
        format_points([], "a", "a")


def test_points_to_percent_matches_original_formula():
    pts = np.array([[0.0, 0.0], [123.0, 45.0], [451.0, 300.0]])
    out = points_to_percent(pts, 451, 300)
    assert out.shape == (3, 2) and out.dtype == np.float64
    np.testing.assert_array_equal(out, pts / np.array([451 / 100, 300 / 100]))
    np.testing.assert_allclose(out, 100 * pts / np.array([451, 300]), rtol=1e-15)
    assert points_to_percent([], 10, 10).shape == (0, 2)


def test_answer_forms():
    assert pointing_answer([], "dogs") == NO_POINTS_ANSWER == "There are none."
    assert point_count_answer(np.zeros((0, 2)), "dogs") == "There are none."
    assert pointing_answer([(50, 50)], "dog") == '<point x="50.0" y="50.0" alt="dog">dog</point>'
    assert point_count_answer([(50, 50), (10, 20)], "dogs") == (
        'Counting the <points x1="10.0" y1="20.0" x2="50.0" y2="50.0" alt="dogs">dogs</points>'
        " shows a total of 2."
    )


# ------------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("n_points", [1, 2, 7])
def test_round_trip_pixels_text_pixels(n_points):
    rng = np.random.default_rng(n_points)
    w, h = 640, 427
    px = rng.uniform([0, 0], [w, h], size=(n_points, 2))
    for text in (pointing_answer(points_to_percent(px, w, h), "obj"),
                 point_count_answer(points_to_percent(px, w, h), "obj")):
        back = np.array(extract_points(text, w, h))
        assert back.shape == (n_points, 2)
        # markup is sorted by x then y; compare in that order, error <= half a 0.1% step (+ float slack)
        order = np.lexsort((np.round(px[:, 1] / h * 1000), np.round(px[:, 0] / w * 1000)))
        np.testing.assert_allclose(back[:, 0], px[order, 0], atol=0.0005 * w + 1e-9)
        np.testing.assert_allclose(back[:, 1], px[order, 1], atol=0.0005 * h + 1e-9)


def test_round_trip_exact_on_one_decimal_percentages():
    pct = [(12.5, 40.0), (99.9, 0.1), (0.0, 100.0)]
    back = extract_points(format_points(pct, "x", "x"), 1000, 1000)
    _assert_points_equal(back, [(0.0, 1000.0), (125.0, 400.0), (999.0, 1.0)])


# -------------------------------------------------------------------------------------- parsing quirks


def test_thousandths_form():
    _assert_points_equal(extract_points('<point p=156,208 alt="o">o</point>', 64, 48), [(9.984, 9.984)])
    points = extract_points("<points 1=100,200 2= 300 , 400 alt=", 100, 10)
    _assert_points_equal(points, [(10.0, 2.0), (30.0, 4.0)])


def test_families_are_grouped_not_interleaved():
    text = 'x="10.0" y="10.0" then (20.0, 20.0)'
    _assert_points_equal(extract_points(text, 100, 100), [(20.0, 20.0), (10.0, 10.0)])


def test_boundary_value_100_is_kept_above_is_dropped():
    _assert_points_equal(extract_points('x="100" y="100.0"', 10, 10), [(10.0, 10.0)])
    assert extract_points('x="100.01" y="0"', 10, 10) == []
    assert extract_points_from_point_count("100.5, 3.5", 10, 10) == []


MALFORMED = [
    "",
    "   ",
    "<point",
    '<point x="',
    '<point x="12.5" y="',
    '<points x1="1e5" y1="nan" alt=">',
    "Click(",
    "Click(1.23, 4.56)",
    "(,)",
    "(１２.５, ３.５)",
    "１２.５, ３.５",
    "p=12,34 p=1234,5678",
    'x="99999999999999999999999999999999999999" y="1"',
    "<points " + 'x1="1.0" y1="2.0" ' * 500 + "alt",
    "\x00\x08\ufffd",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_inputs_never_raise(text):
    for fn in (extract_points, extract_points_from_point_count):
        points = fn(text, 640, 480)
        assert isinstance(points, list)
        for x, y in points:
            assert isinstance(x, float) and isinstance(y, float) and math.isfinite(x) and math.isfinite(y)


def test_non_string_input_gives_no_points():
    assert extract_points(None, 10, 10) == []  # type: ignore[arg-type]
    assert extract_points_from_point_count(b"(1.0, 2.0)", 10, 10) == []  # type: ignore[arg-type]


def test_unicode_digits_only_in_point_count_parser():
    # extract_points uses [0-9]; the point-count parser uses \d (and float() reads Unicode digits)
    assert extract_points("(１.５, ３.５)", 10, 10) == []
    _assert_points_equal(extract_points_from_point_count("１.５, ３.５", 10, 10), [(15.0, 35.0)])


# --------------------------------------------------------------------------------------------- drawing


def test_draw_points_marks_the_points_and_copies():
    base = np.zeros((80, 100, 3), np.uint8)
    img = Image.fromarray(base)
    out = draw_points(img, [(20, 30), (70.4, 60.2)], fill=(255, 0, 0))
    arr = np.asarray(out)
    assert out.size == (100, 80) and out.mode == "RGB"
    assert tuple(arr[30, 20]) == (255, 0, 0) and tuple(arr[60, 70]) == (255, 0, 0)
    assert tuple(arr[0, 0]) == (0, 0, 0) and tuple(arr[5, 95]) == (0, 0, 0)
    assert not np.asarray(img).any(), "input image was modified"
    # an outline of another colour surrounds the fill
    assert (arr == (255, 255, 255)).all(axis=-1).any()


def test_draw_points_accepts_arrays_and_skips_bad_points():
    gray = np.full((50, 60), 40, np.uint8)
    out = np.asarray(draw_points(gray, [(10, 10), (float("nan"), 3), (500, 500)]))
    assert out.shape == (50, 60, 3)
    assert tuple(out[10, 10]) != (40, 40, 40)
    assert np.count_nonzero((out != 40).any(axis=-1)) < 200  # only one marker landed in the image


def test_draw_points_radius_scales_with_image():
    big = np.asarray(draw_points(Image.new("RGB", (1000, 1000)), [(500, 500)]))
    small = np.asarray(draw_points(Image.new("RGB", (100, 100)), [(50, 50)]))
    assert big[500, 512].any()  # default radius 15 px at 1000 px
    assert not small[50, 62].any()  # 3 px at 100 px
    assert small[50, 52].any()
