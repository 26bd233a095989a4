"""molmo_jax.data.synthetic: determinism, PixMo schemas, and that every label is true of the pixels."""

from __future__ import annotations

import hashlib
import io
import math
import re
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import ndimage

from molmo_jax.data import synthetic as syn

SIZE = 224
N_SCENES, N_CLOCKS = 22, 12  # two balanced blocks of counts 0..10
NOISE_TOL = 4  # the largest noise amplitude
EIGHT_CONNECTED = np.ones((3, 3), bool)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    syn.write_synthetic(out, N_SCENES, seed=3, image_size=SIZE, num_clocks=N_CLOCKS)
    return out


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic_val")
    syn.write_synthetic(out, 11, seed=3, image_size=SIZE, num_clocks=4, split="validation")
    return out


def _read(out: Path, name: str, split: str = "train") -> list[dict]:
    return pq.read_table(out / name / f"{split}.parquet").to_pylist()


def _load(url: str) -> bytes:
    assert url.startswith("file:///"), url
    with urllib.request.urlopen(url) as f:
        return f.read()


def _all_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _foreground(image: Image.Image, scene: syn.ShapeScene) -> np.ndarray:
    """Pixels that differ clearly from the (noise-free) background drawn without objects."""
    empty = syn.ShapeScene(scene.size, scene.background, scene.gradient_angle, 0, (), scene.target)
    diff = np.abs(np.asarray(image, np.int16) - np.asarray(syn.draw_scene(empty), np.int16))
    return diff.max(-1) > 40


# ----------------------------------------------------------------------------------------------
# Files: determinism, schemas, URLs


def test_same_seed_gives_identical_files(train_dir: Path, tmp_path: Path) -> None:
    before = _all_files(train_dir)
    syn.write_synthetic(train_dir, N_SCENES, seed=3, image_size=SIZE, num_clocks=N_CLOCKS)
    assert _all_files(train_dir) == before  # rewriting in place changes no byte
    syn.write_synthetic(tmp_path, N_SCENES, seed=3, image_size=SIZE, num_clocks=N_CLOCKS)
    images = {k: v for k, v in _all_files(tmp_path).items() if k.startswith("images/")}
    assert images == {k: v for k, v in before.items() if k.startswith("images/")}
    for name in ("pixmo_cap", "pixmo_points", "pixmo_ask_model_anything", "pixmo_clocks"):
        strip = [{k: v for k, v in r.items() if k != "image_url"} for r in _read(tmp_path, name)]
        assert strip == [{k: v for k, v in r.items() if k != "image_url"} for r in _read(train_dir, name)]


def test_other_seed_and_other_split_differ(train_dir: Path, val_dir: Path, tmp_path: Path) -> None:
    syn.write_synthetic(tmp_path, 5, seed=4, image_size=SIZE, num_clocks=5)
    train = {r["image_sha256"] for n in ("pixmo_count", "pixmo_clocks") for r in _read(train_dir, n)}
    other = {r["image_sha256"] for n in ("pixmo_count", "pixmo_clocks") for r in _read(tmp_path, n)}
    val = {r["image_sha256"] for n in ("pixmo_count", "pixmo_clocks")
           for r in _read(val_dir, n, "validation")}
    assert len(train) == N_SCENES + N_CLOCKS and len(other) == 10 and len(val) == 15
    assert not train & other and not train & val
    assert _read(tmp_path, "pixmo_cap")[0]["caption"] != _read(train_dir, "pixmo_cap")[0]["caption"]


def test_schemas_and_row_counts(train_dir: Path) -> None:
    expected = {
        "pixmo_cap": {"image_url": "string", "caption": "string", "transcripts": "list<element: string>"},
        "pixmo_points": {"image_url": "string", "image_sha256": "string",
                         "points": "list<element: struct<x: double, y: double>>", "count": "int64",
                         "label": "string", "collection_method": "string"},
        "pixmo_count": {"image_url": "string", "image_sha256": "string", "count": "int32",
                        "points": "list<element: struct<x: float, y: float>>", "label": "string"},
        "pixmo_ask_model_anything": {"image_url": "string", "image_sha256": "string", "question": "string",
                                     "answer": "string"},
        "pixmo_clocks": {"image_url": "string", "image_sha256": "string", "hour": "int32", "minute": "int32",
                         "second": "int32"},
    }
    for name, columns in expected.items():
        schema = pq.read_schema(train_dir / name / "train.parquet")
        assert {f.name: str(f.type) for f in schema} == columns, name
    assert not (train_dir / "pixmo_points_eval").exists()  # masks only for held-out splits by default
    n = {name: len(_read(train_dir, name)) for name in expected}
    assert n == {"pixmo_cap": N_SCENES + N_CLOCKS, "pixmo_points": 2 * N_SCENES, "pixmo_count": N_SCENES,
                 "pixmo_ask_model_anything": 2 * N_SCENES, "pixmo_clocks": N_CLOCKS}
    methods = {r["collection_method"] for r in _read(train_dir, "pixmo_points")}
    assert methods == {"pointing", "counting"}


def test_urls_resolve_and_hashes_match(train_dir: Path) -> None:
    for name in ("pixmo_points", "pixmo_count", "pixmo_ask_model_anything", "pixmo_clocks"):
        for row in _read(train_dir, name):
            data = _load(row["image_url"])
            assert hashlib.sha256(data).hexdigest() == row["image_sha256"], row["image_url"]
            assert Image.open(io.BytesIO(data)).size == (SIZE, SIZE)
    for row in _read(train_dir, "pixmo_cap"):
        assert Path(urllib.request.url2pathname(row["image_url"][len("file://"):])).is_file()


def test_files_match_in_memory_generators(train_dir: Path) -> None:
    counts = _read(train_dir, "pixmo_count")
    points = _read(train_dir, "pixmo_points")
    for i, row in enumerate(counts):
        image, scene = syn.synthetic_scene(3, i, image_size=SIZE)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(_load(row["image_url"])))), np.asarray(image))
        targets = scene.matching(scene.target)
        assert row["label"] == scene.target.label and row["count"] == len(targets)
        xy = np.array([(p["x"], p["y"]) for p in row["points"]]).reshape(-1, 2)
        np.testing.assert_allclose(xy, np.array([(o.x, o.y) for o in targets]).reshape(-1, 2), atol=1e-4)
        assert points[2 * i]["label"] == scene.target.label and points[2 * i]["image_url"] == row["image_url"]
    for i, row in enumerate(_read(train_dir, "pixmo_clocks")):
        image, info = syn.synthetic_clock(3, i, image_size=SIZE)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(_load(row["image_url"])))), np.asarray(image))
        assert (row["hour"], row["minute"], row["second"]) == (info["hour"], info["minute"], info["second"])
        assert 1 <= row["hour"] <= 12 and 0 <= row["minute"] < 60


def test_points_are_pixels_and_counts_cover_0_to_10(train_dir: Path) -> None:
    counts = [r["count"] for r in _read(train_dir, "pixmo_count")]
    assert sorted(counts) == sorted(list(range(11)) * 2)  # balanced: each block of 11 has every count
    for row in _read(train_dir, "pixmo_points") + _read(train_dir, "pixmo_count"):
        assert row["count"] == len(row["points"])
        assert all(0 < p["x"] < SIZE and 0 < p["y"] < SIZE for p in row["points"])
    assert max(p["x"] for r in _read(train_dir, "pixmo_count") for p in r["points"]) > 100  # not percent
    # Unbalanced sampling covers the range too.
    rng = np.random.default_rng(0)
    sampled = Counter(len(s.matching(s.target)) for s in (syn.sample_scene(rng, 112) for _ in range(150)))
    assert set(sampled) == set(range(11))


def test_points_eval_masks(val_dir: Path) -> None:
    raw = _read(val_dir, "pixmo_points_eval", "validation")
    rows = syn.read_points_eval(val_dir / "pixmo_points_eval" / "validation.parquet")
    assert len(rows) == len(raw) == 11
    for i, (row, raw_row) in enumerate(zip(rows, raw)):
        image, scene = syn.synthetic_scene(3, i, split="validation", image_size=SIZE)
        masks = row["masks"]
        assert masks.dtype == bool and masks.shape == (row["count"], SIZE, SIZE)
        assert np.array_equal(masks, np.array(raw_row["masks"], bool).reshape(masks.shape))
        assert len(masks) == len(row["points"]) == row["count"] == len(scene.matching(scene.target))
        fg = _foreground(image, scene)
        for p, m in zip(row["points"], masks):
            assert m.shape == (SIZE, SIZE) and m[round(p["y"]), round(p["x"])]
            assert fg[m].all() and ndimage.label(m, EIGHT_CONNECTED)[1] == 1
        if len(masks) > 1:
            assert not np.any(np.sum(masks, 0) > 1)


# ----------------------------------------------------------------------------------------------
# Shapes: the labels are true of the pixels


@pytest.fixture(scope="module")
def scenes() -> list[tuple[Image.Image, syn.ShapeScene]]:
    return [syn.synthetic_scene(11, i, image_size=SIZE) for i in range(33)]


def test_points_lie_on_their_objects(scenes: list) -> None:
    for image, scene in scenes:
        pixels = np.asarray(image, np.int16)
        for obj in scene.objects:
            colour = pixels[round(obj.y), round(obj.x)]
            assert np.abs(colour - obj.rgb).max() <= NOISE_TOL, (obj, colour)
            named = syn.SHAPE_COLOURS[obj.colour]
            assert np.abs(np.array(obj.rgb) - named).max() <= syn.COLOUR_JITTER


def test_objects_are_separate_components_and_counts_match(scenes: list) -> None:
    for image, scene in scenes:
        fg = _foreground(image, scene)
        assert np.array_equal(fg, syn.object_label_map(scene.objects, SIZE) > 0)  # exactly the drawn shapes
        components, n = ndimage.label(fg, EIGHT_CONNECTED)
        assert n == len(scene.objects)  # no overlaps, nothing else drawn
        ids = {components[round(o.y), round(o.x)] for o in scene.objects}
        assert 0 not in ids and len(ids) == n  # one point per component
        targets = scene.matching(scene.target)
        assert len({components[round(o.y), round(o.x)] for o in targets}) == len(targets) <= 10
        # Distractors never match the label; and the label counts exactly the target objects.
        assert all(not scene.target.matches(o) for o in scene.objects if o not in targets)


def test_sizes_positions_and_colours_are_honest(scenes: list) -> None:
    sizes = Counter()
    for _, scene in scenes:
        for obj in scene.objects:
            lo, hi = syn.SIZE_BINS[obj.size]
            assert lo * SIZE <= obj.radius <= hi * SIZE
            sizes[obj.size] += 1
    assert all(sizes[s] > 20 for s in syn.SIZE_BINS)
    assert syn.region_of(10, 10, 224) == "upper left" and syn.region_of(112, 112, 224) == "center"
    assert syn.position_phrase(220, 112, 224) == "on the right"
    assert syn.position_phrase(112, 220, 224) == "at the bottom"
    for obj_rgb in syn.SHAPE_COLOURS.values():  # no object colour is close to any background colour
        for bg in syn.BACKGROUND_COLOURS.values():
            assert np.abs(np.subtract(obj_rgb, bg)).max() > 40 + syn.COLOUR_JITTER + NOISE_TOL


def _describe(n: int, size: str, colour: str, kind: str, region: str) -> str:
    phrase = syn.position_phrase(*{"upper left": (0, 0), "top": (100, 0), "upper right": (200, 0),
                                   "left": (0, 100), "center": (100, 100), "right": (200, 100),
                                   "lower left": (0, 200), "bottom": (100, 200),
                                   "lower right": (200, 200)}[region], 224)
    if n == 1:
        return f"{'an' if size[0] in 'aeiou' else 'a'} {size} {colour} {kind} {phrase}"
    plural = kind + ("es" if kind.endswith("s") else "s")
    return f"{syn.number_word(n)} {size} {colour} {plural} {phrase}"


def test_captions_mention_every_object(scenes: list) -> None:
    for _, scene in scenes:
        caption = syn.scene_caption(scene)
        groups = Counter((syn.region_of(o.x, o.y, SIZE), o.size, o.colour, o.kind) for o in scene.objects)
        for (region, size, colour, kind), n in groups.items():
            assert _describe(n, size, colour, kind, region) in caption, caption
        n = len(scene.objects)
        assert caption.count(",") + caption.count(" and ") >= len(groups) - 1
        if n:
            assert f"In total there {'is' if n == 1 else 'are'} {n} shape" in caption
        transcript = syn.scene_transcript(scene, np.random.default_rng(0))
        assert all(_describe(n, *key[1:], key[0]) in transcript for key, n in groups.items())
    plain = syn.ShapeScene(224, ("white",), 0.0, 0, (
        syn.ShapeObject("cross", "red", (215, 35, 35), "large", 30.0, 30.0, 21.0, 0.0),
        syn.ShapeObject("cross", "red", (215, 35, 35), "large", 60.0, 40.0, 21.0, 0.0),
        syn.ShapeObject("star", "blue", (35, 85, 215), "small", 112.0, 112.0, 12.0, 0.0)), syn.Query("cross"))
    assert syn.scene_caption(plain) == (
        "A simple digital image of three coloured shapes on a plain white background. There are two large "
        "red crosses in the upper left and a small blue star in the center. In total there are 3 shapes: "
        "1 star and 2 crosses.")


def test_qa_answers_are_true(scenes: list) -> None:
    seen = Counter()
    for i, (_, scene) in enumerate(scenes):
        for question, answer in syn.scene_qa(scene, np.random.default_rng(i), num=8):
            number = re.search(r"(\d+)", answer)
            n = int(number.group(1)) if number else (0 if answer.startswith(("There are no", "No,")) else 1)
            if m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
                seen["count_colour"] += 1
                assert n == sum(o.colour == m.group(1) for o in scene.objects), (question, answer)
            elif m := re.fullmatch(r"How many (\w+) are in the image\?", question):
                seen["count_kind"] += 1
                assert n == sum(syn.plural(o.kind) == m.group(1) for o in scene.objects), (question, answer)
            elif m := re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", question):
                seen["exists"] += 1
                assert n == len(scene.matching(syn.Query(m.group(2), m.group(1)))), (question, answer)
            elif (m := re.fullmatch(r"What colour is the (\w+)\?", question)) and m.group(1) != "background":
                seen["colour_of"] += 1
                (obj,) = [o for o in scene.objects if o.kind == m.group(1)]
                assert answer == f"The {obj.kind} is {obj.colour}."
            elif m := re.fullmatch(r"Where is the (\w+) (\w+)\?", question):
                seen["where"] += 1
                (obj,) = scene.matching(syn.Query(m.group(2), m.group(1)))
                assert syn.position_phrase(obj.x, obj.y, SIZE) in answer
            elif question == "How many shapes are there in total?":
                assert n == len(scene.objects)
    assert min(seen.values()) > 3 and len(seen) == 5


# ----------------------------------------------------------------------------------------------
# Clocks: the hands show the stated time


def _ray_colours(pixels: np.ndarray, info: dict, angle: float, r0: float, r1: float) -> np.ndarray:
    """[samples, 9, 3]: the 3x3 neighbourhood of points every half pixel along a ray from the centre
    (hands 2-3 px wide are drawn up to a pixel off their exact centre line)."""
    cx, cy = info["center"]
    radii = np.arange(r0, r1, 0.5)
    xs = np.rint(cx + radii * math.sin(math.radians(angle))).astype(int)
    ys = np.rint(cy - radii * math.cos(math.radians(angle))).astype(int)
    dy, dx = np.mgrid[-1:2, -1:2]
    return pixels[ys[:, None] + dy.reshape(-1), xs[:, None] + dx.reshape(-1)]


def _fraction(colours: np.ndarray, rgb: tuple[int, int, int]) -> float:
    """Share of samples with some pixel of the hand colour in their neighbourhood."""
    return float(np.mean((np.abs(colours - np.asarray(rgb)).max(-1) <= NOISE_TOL).any(-1)))


def test_clock_hands_point_at_the_time() -> None:
    rng = np.random.default_rng(5)
    wrong_hits = []
    for _ in range(40):
        image, info = syn.render_clock(rng, SIZE)
        pixels = np.asarray(image, np.int16)
        r = info["radius"]
        # Expected directions, clockwise from 12, computed here from the stated time alone.
        minutes = info["minute"] + (info["second"] or 0) / 60
        hour_angle, minute_angle = 30 * (info["hour"] % 12) + 0.5 * minutes, 6 * minutes
        second_angle = None if info["second"] is None else 6 * info["second"]
        if second_angle is not None:
            second_rgb = info["second_rgb"]
            ray = _ray_colours(pixels, info, second_angle, 0.08 * r, info["second_length"] - 1)
            assert _fraction(ray, second_rgb) > 0.9, info
        on_top = [info["minute_rgb"]] + ([second_rgb] if second_angle is not None else [])
        # The minute hand beyond the hour hand's tip; the hour hand between the cap and its tip.
        ray = _ray_colours(pixels, info, minute_angle, info["hour_length"] + 2, info["minute_length"] - 1)
        assert _fraction(ray, info["minute_rgb"]) + _fraction(ray, on_top[-1]) > 0.9, info
        ray = _ray_colours(pixels, info, hour_angle, 0.08 * r, info["hour_length"] - 1)
        assert sum(_fraction(ray, c) for c in [info["hour_rgb"], *on_top]) > 0.9, info
        assert info["hour_length"] < 0.6 * r < 0.7 * r < info["minute_length"] < 0.86 * r
        assert info["second"] is None or info["second_length"] > info["minute_length"]
        assert info["hour_width"] >= 1.5 * info["minute_width"]
        # Control: 15 minutes off, the minute hand is not there.
        ray = _ray_colours(pixels, info, minute_angle + 90, info["hour_length"] + 2,
                           info["minute_length"] - 1)
        wrong_hits.append(_fraction(ray, info["minute_rgb"]))
    assert np.mean(wrong_hits) < 0.2


def test_clock_text_and_variety() -> None:
    assert syn.format_time(3, 7) == "3:07" and syn.format_time(12, 0, 5) == "12:00:05"
    assert syn.hand_angles(3, 30, None) == (105.0, 180.0, None)
    assert syn.hand_angles(12, 0, 30) == (0.25, 3.0, 180.0)
    rng = np.random.default_rng(1)
    infos = [syn.render_clock(rng, 112)[1] for _ in range(80)]
    for key in ("shape", "face", "ticks", "numerals", "hand_style", "hour_colour"):
        assert len({i[key] for i in infos}) >= 2, key
    assert any(i["second"] is None for i in infos) and any(i["second"] is not None for i in infos)
    assert all(i["ticks"] != "none" or i["numerals"] != "none" for i in infos)
    for info in infos[:10]:
        caption = syn.clock_caption(info)
        time = syn.format_time(info["hour"], info["minute"], info["second"])
        assert caption.endswith(f"The time shown is {time}.")
        assert "hour hand" in caption and "minute hand" in caption
        assert time in syn.clock_transcript(info)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        syn.write_synthetic("/nonexistent-never-created", 1, split="../x")
    with pytest.raises(ValueError, match="image counts"):
        syn.write_synthetic("/nonexistent-never-created", -1)
    with pytest.raises(ValueError, match="point_queries"):
        syn.write_synthetic("/nonexistent-never-created", 1, point_queries=0)


def test_more_point_queries_per_scene(train_dir: Path, tmp_path: Path) -> None:
    """point_queries=4: the default two rows come first and unchanged, then distinct present labels."""
    syn.write_synthetic(tmp_path, N_SCENES, seed=3, image_size=SIZE, num_clocks=0, point_queries=4)
    two, four = _read(train_dir, "pixmo_points"), _read(tmp_path, "pixmo_points")
    by_image: dict[str, list[dict]] = {}
    for r in four:
        by_image.setdefault(r["image_sha256"], []).append(r)
    assert len(by_image) == N_SCENES
    assert sum(len(rows) for rows in by_image.values()) > 3 * N_SCENES  # most scenes have 2+ other labels
    for i, rows in enumerate(by_image.values()):
        _, scene = syn.synthetic_scene(3, i, image_size=SIZE)
        assert [r["label"] for r in rows[:2]] == [r["label"] for r in two[2 * i : 2 * i + 2]]
        labels = [r["label"] for r in rows]
        assert 2 <= len(labels) <= 4 and len(set(labels)) == len(labels)
        present = {syn.plural(o.kind) for o in scene.objects}
        present |= {f"{o.colour} {syn.plural(o.kind)}" for o in scene.objects}
        for r in rows[2:]:
            assert r["label"] in present and r["count"] == len(r["points"]) >= 1
