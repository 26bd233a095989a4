"""Image preprocessing: resampling, tiling, crops, masks and tokens, golden parity and bad inputs."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from conftest import golden_root, rel_err, require_golden
from PIL import Image

from molmo_jax.preprocess import image as mi
from molmo_jax.preprocess import resize as rs
from molmo_jax.preprocess.image import ImagePreprocessConfig, ImageTokenIds

IDS = ImageTokenIds(start=1000, end=1001, patch=1002, col=1003)


def _cases() -> list[str]:
    root = golden_root() / "preprocess"
    found = sorted(p.name for p in root.iterdir() if (p / "case.npz").exists()) if root.is_dir() else []
    return found or ["<golden preprocess folder missing>"]


def _config_from_meta(settings: dict) -> ImagePreprocessConfig:
    h, w = settings["base_image_input_size"]
    assert h == w
    assert settings["normalize"].startswith("openai") and settings["resize"].startswith("torch-bilinear")
    return ImagePreprocessConfig(
        crop_mode=settings["crop_mode"], max_crops=settings["max_crops"],
        overlap_margins=tuple(settings["overlap_margins"]), crop_size=h,
        patch_size=settings["image_patch_size"], pooling_h=settings["image_pooling_hw"][0],
        pooling_w=settings["image_pooling_hw"][1], use_col_tokens=settings["use_col_tokens"],
        image_padding_mask=settings["image_padding_mask"])


@pytest.mark.golden
@pytest.mark.parametrize("case", _cases())
def test_golden_crops_and_masks(case):
    folder = require_golden("preprocess", case)
    ref = np.load(folder / "case.npz")
    meta = json.loads((folder / "meta.json").read_text())
    cfg = _config_from_meta(meta["settings"])
    assert (cfg.tokens_h, cfg.tokens_w) == tuple(meta["settings"]["image_token_length_hw"])
    image = mi.load_image(folder / meta["image_file"])
    assert list(image.shape[:2]) == ref["original_size_hw"].tolist()
    out = mi.image_to_inputs(image, cfg, IDS)

    crops = out.crops
    assert crops.shape == (int(ref["n_crops"]), 576, 588) and crops.dtype == np.float32
    assert np.abs(crops[ref["images_full_idx"]] - ref["images_full"]).max() <= 1e-5
    assert np.abs(crops[:, ::5, ::7] - ref["images_sub"]).max() <= 1e-5
    sums = crops.astype(np.float64).sum(axis=(1, 2))
    sumsq = np.square(crops.astype(np.float64)).sum(axis=(1, 2))
    assert np.max(np.abs(sums - ref["images_crop_sum"]) / np.abs(ref["images_crop_sum"])) <= 1e-6
    assert np.max(np.abs(sumsq - ref["images_crop_sumsq"]) / ref["images_crop_sumsq"]) <= 1e-6
    assert rel_err(crops.min(axis=(1, 2)), ref["images_crop_min"]) <= 1e-5
    assert rel_err(crops.max(axis=(1, 2)), ref["images_crop_max"]) <= 1e-5
    assert out.image_masks.shape == ref["image_masks"].shape
    assert np.abs(out.image_masks - ref["image_masks"]).max() <= 1e-6


def test_golden_cases_are_discovered():
    assert "<golden preprocess folder missing>" not in _cases()
    require_golden("preprocess")


# ----------------------------------------------------------------------------------------------
# Resampling


def test_resample_weights_match_the_triangle_filter_by_hand():
    # 4 -> 2: scale 2, support 2; output 0 centred at 1.0 reads inputs 0..2 with triangle weights
    # |(j - 1 + 0.5) / 2| -> 0.75, 0.75, 0.25 (normalised by 1.75).
    mat = rs.float_resample_matrix(4, 2).toarray()
    np.testing.assert_allclose(mat[0], np.float32([0.75, 0.75, 0.25, 0]) / np.float32(1.75), rtol=1e-7)
    np.testing.assert_allclose(mat[1], np.float32([0, 0.25, 0.75, 0.75]) / np.float32(1.75), rtol=1e-7)
    # Upsampling 2 -> 4 is plain bilinear with half-pixel centres, edges clamped.
    np.testing.assert_allclose(rs.float_resample_matrix(2, 4).toarray(),
                               [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], atol=1e-7)
    assert np.allclose(rs.float_resample_matrix(37, 11).sum(axis=1), 1.0, atol=1e-6)


def test_resize_keeps_constants_and_same_size_is_identity():
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (23, 31, 3)).astype(np.uint8)
    same = rs.resize_float(rs.to_float_wh(img), (23, 31))
    np.testing.assert_array_equal(same, img.astype(np.float32) / np.float32(255))
    flat = np.full((40, 57, 3), 200, np.uint8)
    for hw in [(13, 19), (80, 99), (40, 7)]:
        out = rs.resize_float(rs.to_float_wh(flat), hw)
        assert out.shape == hw + (3,)
        np.testing.assert_allclose(out, np.float32(200) / np.float32(255), rtol=1e-6)


def test_uint8_resize_kinds_follow_pil_fixed_point_kernels():
    # PIL and PyTorch share the antialiased kernels; they differ only in the fixed-point precision.
    rng = np.random.RandomState(1)
    img = np.clip(rng.normal(128, 60, (61, 83, 3)), 0, 255).astype(np.uint8)
    for hw in [(30, 40), (100, 120)]:
        ours = rs.resize_uint8(img, hw, "bicubic", True).astype(int)
        pil = np.asarray(Image.fromarray(img).resize(hw[::-1], Image.BICUBIC)).astype(int)
        assert np.abs(ours - pil).max() <= 2 and (ours != pil).mean() < 0.02
    up_aa = rs.resize_uint8(img, (122, 166), "bilinear", True)
    up_plain = rs.resize_uint8(img, (122, 166), "bilinear", False)
    np.testing.assert_array_equal(up_aa, up_plain)  # no antialiasing difference when enlarging


# ----------------------------------------------------------------------------------------------
# Geometry (MOLMO_SPEC 5.6, 5.10, appendix A)


@pytest.mark.parametrize("wh, tiling", [((640, 480), (2, 3)), ((480, 640), (3, 2)), ((1920, 1080), (3, 4)),
                                        ((100, 100), (1, 1)), ((2000, 100), (1, 1)), ((2000, 112), (1, 9)),
                                        ((2000, 300), (1, 9)), ((336, 336), (1, 1))])
def test_select_tiling(wh, tiling):
    w, h = wh
    assert mi.select_tiling(h - 112, w - 112, 224, 12) == tiling


@pytest.mark.parametrize("wh, n_tokens", [((336, 336), 316), ((640, 480), 740), ((480, 640), 748),
                                          ((1024, 768), 1196), ((2000, 300), 1084), ((100, 100), 316)])
def test_image_token_counts(wh, n_tokens):
    cfg = ImagePreprocessConfig()
    w, h = wh
    assert mi.image_token_count(h, w, cfg) == n_tokens


def test_float32_truncation_of_the_resized_size():
    assert mi.fit_size(480, 640, 336, 336) == (251, 336)
    assert mi.fit_size(1080, 1920, 784, 1008) == (567, 1007)
    assert mi.fit_size(480, 640, 560, 784) == (560, 746)


def test_worked_example_640x480():
    cfg = ImagePreprocessConfig()
    img = np.random.RandomState(2).randint(0, 256, (480, 640, 3)).astype(np.uint8)
    out = mi.image_to_inputs(img, cfg, IDS)
    assert out.crops.shape == (7, 576, 588) and out.tokens.shape == (740,)
    assert (out.tokens == IDS.patch).sum() == 704
    kept = (out.patch_index >= 0).sum(axis=1)
    assert kept.tolist() == [144, 100, 80, 100, 100, 80, 100]
    # Positions inside the image tokens (the sequence adds 1 for BOS): spec 5.10 minus one.
    assert out.patch_index[0, :3].tolist() == [1, 2, 3] and out.patch_index[0, 12] == 14
    assert out.patch_index[1, 0] == 159 and out.patch_index[2].max() > 0
    assert out.patch_index[2][out.patch_index[2] >= 0][0] == 169
    assert out.patch_index[4][out.patch_index[4] >= 0][0] == 449
    idx = out.patch_index.reshape(7, 12, 12)
    assert (idx[2, :, :2] == -100).all() and (idx[2, 10:] == -100).all() and (idx[4, :2] == -100).all()
    # Masks: crop (0, 0) has 19 px of left padding; the last row is the original's -1 row.
    assert out.image_masks[0, 0] == 0.0 and out.image_masks[0, 1] == np.float32(9 * 14) / np.float32(196)
    assert (out.image_masks[6] == -1).all() and (out.image_masks[1:6] >= 0).all()
    # Every <im_patch> receives exactly one feature.
    valid = np.sort(out.patch_index[out.patch_index >= 0])
    np.testing.assert_array_equal(valid, np.nonzero(out.tokens == IDS.patch)[0])
    assert out.tokens[0] == IDS.start and out.tokens[157] == IDS.end and out.tokens[158] == IDS.start


def test_resize_crop_mode_is_the_global_view_only():
    cfg = ImagePreprocessConfig(crop_mode="resize")
    img = np.random.RandomState(3).randint(0, 256, (200, 300, 3)).astype(np.uint8)
    out = mi.image_to_inputs(img, cfg, IDS)
    full = mi.image_to_inputs(img, ImagePreprocessConfig(), IDS)
    assert out.crops.shape == (1, 576, 588) and len(out.tokens) == 158
    np.testing.assert_array_equal(out.crops[0], full.crops[0])
    np.testing.assert_array_equal(out.patch_index, full.patch_index[:1])
    assert out.image_masks.shape == (1, 576) and out.image_masks[0, 0] == 0.0  # letterboxed rows on top
    assert cfg.max_crops_per_image == 1 and ImagePreprocessConfig().max_crops_per_image == 13


def test_small_demo_config_is_self_consistent():
    cfg = ImagePreprocessConfig(crop_size=112, overlap_margins=(2, 2), max_crops=4)
    assert (cfg.tokens_per_crop, cfg.window_px, cfg.margin_px) == (16, 56, 56)
    for hw in [(1, 1), (50, 300), (300, 50), (224, 224), (97, 131)]:
        img = np.random.RandomState(sum(hw)).randint(0, 256, hw + (3,)).astype(np.uint8)
        out = mi.image_to_inputs(img, cfg, IDS)
        assert out.crops.shape[1:] == (64, 588) and out.patch_index.shape[1] == 16
        assert len(out.crops) <= 1 + cfg.max_crops and len(out.tokens) == mi.image_token_count(*hw, cfg)
        valid = np.sort(out.patch_index[out.patch_index >= 0])
        np.testing.assert_array_equal(valid, np.nonzero(out.tokens == IDS.patch)[0])


def test_normalisation_kinds():
    img = np.full((20, 20, 3), 255, np.uint8)

    def first_pixel(**kw):
        cfg = ImagePreprocessConfig(crop_mode="resize", **kw)
        return mi.image_to_inputs(img, cfg, IDS).crops[0, 0, :3]

    clip = (1 - np.float32(mi.CLIP_MEAN)) / np.float32(mi.CLIP_STD)
    np.testing.assert_allclose(first_pixel(), clip, rtol=1e-6)
    np.testing.assert_allclose(first_pixel(normalize="siglip"), [1, 1, 1])
    np.testing.assert_allclose(first_pixel(normalize="dinov2"),
                               (1 - np.float32(mi.IMAGENET_MEAN)) / np.float32(mi.IMAGENET_STD), rtol=1e-6)
    np.testing.assert_allclose(first_pixel(image_mean=(0.5,) * 3, image_std=(0.25,) * 3), [2, 2, 2])
    np.testing.assert_allclose(first_pixel(normalize="none"), [1, 1, 1])
    # Letterbox padding is 0 before normalisation: black, not 0, after it (siglip: -1).
    pad = mi.image_to_inputs(np.full((10, 40, 3), 255, np.uint8),
                             ImagePreprocessConfig(crop_mode="resize", normalize="siglip"), IDS).crops[0, 0]
    np.testing.assert_array_equal(pad, -1)


@pytest.mark.parametrize("kind", ["siglip", "dino", "metaclip"])
def test_stretching_resize_kinds_fill_the_crop(kind):
    img = np.random.RandomState(4).randint(0, 256, (50, 150, 3)).astype(np.uint8)
    out = mi.image_to_inputs(img, ImagePreprocessConfig(resize=kind, crop_mode="resize"), IDS)
    assert (out.image_masks == 1).all()
    canvas, box = mi.letterbox(img, (336, 336), ImagePreprocessConfig(resize=kind, normalize="none"))
    assert box == (0, 0, 336, 336) and canvas.min() >= 0 and canvas.max() <= 1


def test_config_validation():
    with pytest.raises(ValueError, match="crop_mode"):
        ImagePreprocessConfig(crop_mode="tiles")
    with pytest.raises(ValueError, match="multiple"):
        ImagePreprocessConfig(crop_size=100)
    with pytest.raises(ValueError, match="overlap_margins"):
        ImagePreprocessConfig(overlap_margins=(3, 3))
    with pytest.raises(ValueError, match="no crop window"):
        ImagePreprocessConfig(crop_size=112, overlap_margins=(4, 4))


# ----------------------------------------------------------------------------------------------
# Loading and bad inputs


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (its pixel data is a 1x1 image's)."""
    data = bytearray(_png_bytes(Image.new("L", (1, 1))))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I", "CMYK"])
def test_every_pil_mode_loads_as_rgb(mode):
    src = Image.fromarray(np.random.RandomState(5).randint(0, 256, (7, 9, 3)).astype(np.uint8))
    img = src.convert(mode) if mode not in ("I;16", "I") else src.convert("L").convert(mode)
    out = mi.load_image(img)
    assert out.shape == (7, 9, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))


def test_rgba_drops_alpha_and_grey_is_replicated(tmp_path):
    rgba = np.random.RandomState(6).randint(0, 256, (5, 6, 4)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(mi.load_image(tmp_path / "a.png"), rgba[:, :, :3])
    grey = rgba[:, :, 0]
    np.testing.assert_array_equal(mi.load_image(grey), np.repeat(grey[:, :, None], 3, 2))


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = mi.load_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:15].mean() > 200 and out[25:].mean() < 50  # the white half is now on top


def test_one_pixel_image_works():
    out = mi.load_image(_png_bytes(Image.new("RGB", (1, 1), (10, 200, 30))))
    assert out.shape == (1, 1, 3)
    inputs = mi.image_to_inputs(out, ImagePreprocessConfig(), IDS)
    assert inputs.crops.shape == (2, 576, 588) and np.isfinite(inputs.crops).all()
    thin = mi.image_to_inputs(np.zeros((1, 2000, 3), np.uint8), ImagePreprocessConfig(), IDS)
    assert thin.crops.shape[0] >= 2  # the original crashes in torch here (a 0-px side); we keep 1 px


def test_truncated_file_is_refused_unless_allowed(tmp_path):
    img = Image.fromarray(np.random.RandomState(7).randint(0, 256, (64, 64, 3)).astype(np.uint8))
    path = tmp_path / "cut.jpg"
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(mi.ImageLoadError, match="cut.jpg"):
        mi.load_image(path)
    assert mi.load_image(path, allow_truncated=True).shape == (64, 64, 3)


def test_non_image_file_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(mi.ImageLoadError, match="notes.txt"):
        mi.load_image(path)
    with pytest.raises(mi.ImageLoadError):
        mi.load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError):  # every image error is a ValueError
        mi.load_image(b"\x89PNG\r\n\x1a\n garbage")


def test_zero_size_images_are_refused():
    with pytest.raises(mi.EmptyImageError, match="zero size"):
        mi.load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(mi.EmptyImageError, match="zero size"):
        mi.load_image(Image.new("RGB", (0, 0)))
    with pytest.raises(mi.ImageError):
        mi.load_image(_png_with_size(0, 0))


def test_decompression_bomb_is_refused_naming_the_size(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_with_size(20000, 20000))
    with pytest.raises(mi.ImageTooLargeError, match=r"bomb\.png.*400000000"):
        mi.load_image(path)
    small = _png_bytes(Image.new("RGB", (300, 200)))
    with pytest.raises(mi.ImageTooLargeError, match="300x200"):
        mi.load_image(small, max_pixels=1000)


def test_bad_arrays_are_refused():
    with pytest.raises(mi.ImageLoadError, match="uint8"):
        mi.load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(mi.ImageLoadError, match="shape"):
        mi.load_image(np.zeros((4, 4, 2), np.uint8))
