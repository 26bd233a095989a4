"""Image loading, multi-crop tiling, patches and image tokens, exactly as the original Molmo.

One image becomes (``C`` crops, ``P = (crop_size / patch_size)**2`` patches per crop,
``D = patch_size**2 * 3`` values per patch, ``T = tokens_h * tokens_w`` pooled tokens per crop):

* ``crops``        float32 ``[C, P, D]``  normalised pixels, patch-major, values ordered (dy, dx, channel)
* ``image_masks``  float32 ``[C, P]``     fraction of each patch covered by the image (with the original's
  off-by-one: row ``k`` belongs to high-res crop ``k``, the last row is ``-1``)
* ``tokens``       int32   ``[N]``        ``<im_start>`` ... ``<im_end>`` blocks, global view first
* ``patch_index``  int32   ``[C, T]``     position in ``tokens`` of the ``<im_patch>`` that receives each
  pooled feature, ``-100`` for overlap-margin cells

``crop_mode="overlap-and-resize-c2"`` (released models): a global view (the whole image letterboxed to
one crop) plus a grid of overlapping crops of the image resized onto a canvas of
``rows * window + margin`` x ``cols * window + margin`` pixels; only the non-margin part of each crop
produces tokens. ``crop_mode="resize"``: the global view only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from molmo_jax.preprocess import resize as _resize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_NORMALIZE_ALIASES = {
    "openai": "openai",
    "clip": "openai",
    "metaclip": "openai",
    "siglip": "siglip",
    "dino": "dino",
    "dinov2": "dino",
    "none": "none",
}
_RESIZE_KINDS = ("default", "torch-bilinear", "siglip", "dino", "metaclip")
CROP_MODES = ("overlap-and-resize-c2", "resize")

# PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS with the default setting).
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray


class ImageError(ValueError):
    """An image that cannot be turned into model inputs."""


class ImageLoadError(ImageError):
    """Not an image, a truncated file, or an unsupported pixel format."""


class ImageTooLargeError(ImageError):
    """More pixels than allowed (decompression-bomb guard)."""


class EmptyImageError(ImageError):
    """An image with zero width or height."""


@dataclasses.dataclass(frozen=True)
class ImagePreprocessConfig:
    """Image settings; the defaults are those of the released Molmo models (MolmoE-1B, 7B-O, 7B-D).

    Attributes:
      crop_mode: "overlap-and-resize-c2" (global view + overlapping tiles) or "resize" (global view only).
      max_crops: most high-res tiles per image (the global view is extra).
      overlap_margins: (left/top, right/bottom) patches of each tile that overlap its neighbours;
        multiples of the pooling size.
      crop_size: side of one (square) crop in pixels, a multiple of ``patch_size``.
      patch_size: ViT patch side in pixels.
      pooling_h, pooling_w: pooling window (patches) of the connector; one token per window.
      use_col_tokens: end every row of image tokens with ``<im_col>``.
      normalize: "openai" (also "clip", "metaclip": CLIP mean/std), "siglip" (``2x - 1``),
        "dino" / "dinov2" (ImageNet mean/std) or "none".
      image_mean, image_std: explicit per-channel statistics (override ``normalize``).
      resize: "default" (= "torch-bilinear": float32 antialiased bilinear, aspect kept, zero letterbox),
        "siglip" (uint8 bilinear without antialiasing, stretched), "dino" / "metaclip" (uint8 bicubic
        antialiased, stretched).
      pad_value: letterbox value before normalisation.
      image_padding_mask: produce ``image_masks``.
      max_image_pixels: loading refuses larger images (decompression-bomb guard).
    """

    crop_mode: str = "overlap-and-resize-c2"
    max_crops: int = 12
    overlap_margins: tuple[int, int] = (4, 4)
    crop_size: int = 336
    patch_size: int = 14
    pooling_h: int = 2
    pooling_w: int = 2
    use_col_tokens: bool = True
    normalize: str = "openai"
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    resize: str = "default"
    pad_value: float = 0.0
    image_padding_mask: bool = True
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self):
        object.__setattr__(self, "overlap_margins", tuple(int(m) for m in self.overlap_margins))
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.normalize not in _NORMALIZE_ALIASES:
            raise ValueError(f"normalize must be one of {sorted(_NORMALIZE_ALIASES)}, got {self.normalize!r}")
        if self.resize not in _RESIZE_KINDS:
            raise ValueError(f"resize must be one of {_RESIZE_KINDS}, got {self.resize!r}")
        if (self.image_mean is None) != (self.image_std is None):
            raise ValueError("image_mean and image_std must be given together")
        if self.crop_size <= 0 or self.patch_size <= 0 or self.crop_size % self.patch_size:
            raise ValueError(
                f"crop_size {self.crop_size} must be a positive multiple of patch_size {self.patch_size}"
            )
        if self.max_crops < 1:
            raise ValueError(f"max_crops must be >= 1, got {self.max_crops}")
        left, right = self.overlap_margins
        for m in (left, right):
            if m < 0 or m % self.pooling_h or m % self.pooling_w:
                raise ValueError(
                    f"overlap_margins {self.overlap_margins} must be non-negative multiples of "
                    f"the pooling size ({self.pooling_h}, {self.pooling_w})"
                )
        if self.crop_mode != "resize" and self.window_patches <= 0:
            raise ValueError(
                f"overlap_margins {self.overlap_margins} leave no crop window in a "
                f"{self.patches_per_side}-patch crop"
            )

    # Derived sizes -------------------------------------------------------------------------------
    @property
    def patches_per_side(self) -> int:
        return self.crop_size // self.patch_size

    @property
    def patches_per_crop(self) -> int:
        return self.patches_per_side**2

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * 3

    @property
    def tokens_h(self) -> int:
        return -(-self.patches_per_side // self.pooling_h)

    @property
    def tokens_w(self) -> int:
        return -(-self.patches_per_side // self.pooling_w)

    @property
    def tokens_per_crop(self) -> int:
        return self.tokens_h * self.tokens_w

    @property
    def window_patches(self) -> int:
        return self.patches_per_side - sum(self.overlap_margins)

    @property
    def window_px(self) -> int:
        return self.window_patches * self.patch_size

    @property
    def margin_px(self) -> int:
        return sum(self.overlap_margins) * self.patch_size

    @property
    def max_crops_per_image(self) -> int:
        """Crop slots one image can need (the original's ``get_max_crops``)."""
        return 1 if self.crop_mode == "resize" else 1 + self.max_crops


class ImageTokenIds(NamedTuple):
    start: int
    end: int
    patch: int
    col: int


class ImageInputs(NamedTuple):
    crops: np.ndarray  # float32 [C, P, D]
    image_masks: np.ndarray | None  # float32 [C, P]
    tokens: np.ndarray  # int32 [N]
    patch_index: np.ndarray  # int32 [C, T]


# ----------------------------------------------------------------------------------------------
# Loading


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    allow_truncated: bool = False,
) -> np.ndarray:
    """Load an image as uint8 ``[H, W, 3]`` RGB, like the original ``load_image``.

    PIL open -> ``convert("RGB")`` (alpha dropped, grey replicated, palettes / CMYK / 16-bit converted
    by PIL) -> EXIF orientation applied. Accepts a path, encoded bytes, a PIL image or a uint8 array
    (``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]``).

    Raises (all ``ValueError`` subclasses, naming the file): ``ImageLoadError`` for files that are
    not images or are truncated (the original loads truncated files with PIL's
    ``LOAD_TRUNCATED_IMAGES``; pass ``allow_truncated=True`` for that, which toggles the PIL global for
    the duration of the decode), ``EmptyImageError`` for a zero-size image, ``ImageTooLargeError``
    above ``max_pixels`` pixels: large images are refused before decoding, never downscaled.
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, name)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, name, max_pixels)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name}: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    with image:
        if allow_truncated:
            from PIL import ImageFile

            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            try:
                return _pil_to_rgb(image, name, max_pixels)
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
        return _pil_to_rgb(image, name, max_pixels)


def _pil_to_rgb(image: Image.Image, name: str, max_pixels: int) -> np.ndarray:
    w, h = image.size
    if w <= 0 or h <= 0:
        raise EmptyImageError(f"{name}: image has zero size ({w}x{h})")
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{name}: image is {w}x{h} = {w * h:,} pixels, more than the limit of "
            f"{max_pixels:,} (max_image_pixels)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency warnings, as the original
            rgb = image.convert("RGB")
        with contextlib.suppress(Exception):  # a broken EXIF block is ignored, as in the original
            rgb = ImageOps.exif_transpose(rgb)
        array = np.asarray(rgb, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None
    if array.ndim != 3 or array.shape[2] != 3 or array.size == 0:
        raise EmptyImageError(f"{name}: decoded to an empty array {array.shape}")
    return array


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ImageLoadError(f"{name}: image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageLoadError(f"{name}: expected an [H, W, 3] image array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise EmptyImageError(f"{name}: image has zero size ({array.shape[1]}x{array.shape[0]})")
    return np.ascontiguousarray(array)


# ----------------------------------------------------------------------------------------------
# Resize, normalise, tile


def _mean_std(cfg: ImagePreprocessConfig) -> tuple[np.ndarray, np.ndarray] | None:
    if cfg.image_mean is not None:
        return np.asarray(cfg.image_mean, np.float32), np.asarray(cfg.image_std, np.float32)
    kind = _NORMALIZE_ALIASES[cfg.normalize]
    if kind == "openai":
        return np.asarray(CLIP_MEAN, np.float32), np.asarray(CLIP_STD, np.float32)
    if kind == "dino":
        return np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    return None


def _rows(x: np.ndarray) -> np.ndarray:
    """``[h, w, 3]`` view -> ``[h, w * 3]`` view (raises instead of silently copying)."""
    rows = x.view()
    rows.shape = (x.shape[0], x.shape[1] * x.shape[2])
    return rows


def normalize_pixels(x: np.ndarray, cfg: ImagePreprocessConfig, out: np.ndarray | None = None) -> np.ndarray:
    """float32 ``[h, w, 3]`` in [0, 1] -> normalised (float32, subtract then divide, as the original).

    ``x`` is overwritten when ``out`` is a different array (e.g. a window of the letterbox canvas).
    Works on ``[h, w * 3]`` rows with per-channel statistics tiled along the row, which is much
    faster than broadcasting over a trailing axis of 3.
    """
    out = x if out is None else out
    x_rows, out_rows = _rows(x), _rows(out)
    width = x.shape[1]
    stats = _mean_std(cfg)
    if stats is not None:
        mean, std = stats
        np.subtract(x_rows, np.tile(mean, width), out=x_rows)
        np.divide(x_rows, np.tile(std, width), out=out_rows)
    elif _NORMALIZE_ALIASES[cfg.normalize] == "siglip":
        np.multiply(x_rows, np.float32(2.0), out=x_rows)
        np.add(x_rows, np.float32(-1.0), out=out_rows)
    elif out is not x:
        out_rows[...] = x_rows
    return out


def fit_size(height: int, width: int, out_h: int, out_w: int) -> tuple[int, int]:
    """Aspect-preserving size inside ``out_h x out_w``: float32 scale, ``int()`` truncation
    (640x480 -> 251x336 in a 336 box, not 252). A side truncated to 0 (e.g. a 2000x1 image) is kept
    at 1 px, where the original fails inside torch."""
    f32 = np.float32
    scale = min(f32(out_w) / f32(width), f32(out_h) / f32(height))
    return max(int(f32(height) * scale), 1), max(int(f32(width) * scale), 1)


def letterbox(
    image: np.ndarray, out_hw: tuple[int, int], cfg: ImagePreprocessConfig, cache: dict | None = None
):
    """uint8 ``[H, W, 3]`` -> (normalised float32 ``[out_h, out_w, 3]``, image box (top, left, h, w)).

    "default" resize: aspect-preserving resize, centred (extra pixel bottom/right), padded with
    ``pad_value`` *before* normalisation. Other resize kinds stretch to the full size. ``cache``
    (a dict) shares the float conversion between several resizes of one image.
    """
    out_h, out_w = out_hw
    if cfg.resize in ("default", "torch-bilinear"):
        h, w = fit_size(image.shape[0], image.shape[1], out_h, out_w)
        cache = {} if cache is None else cache
        if "float_wh" not in cache:
            cache["float_wh"] = _resize.to_float_wh(image)
        resized = _resize.resize_float(cache["float_wh"], (h, w), "bilinear")
    else:
        h, w = out_h, out_w
        filt, antialias = ("bilinear", False) if cfg.resize == "siglip" else ("bicubic", True)
        resized = _resize.resize_uint8(image, (h, w), filt, antialias).astype(np.float32)
        resized /= np.float32(255.0)
    top, left = (out_h - h) // 2, (out_w - w) // 2
    canvas = np.empty((out_h, out_w, 3), np.float32)
    if (h, w) != (out_h, out_w):
        pad = normalize_pixels(np.full((1, 1, 3), cfg.pad_value, np.float32), cfg)
        _rows(canvas)[...] = np.tile(pad.reshape(3), out_w)
    normalize_pixels(resized, cfg, out=canvas[top : top + h, left : left + w])
    return canvas, (top, left, h, w)


def patch_coverage(box: tuple[int, int, int, int], size_hw: tuple[int, int], patch: int) -> np.ndarray:
    """float32 ``[H / patch, W / patch]``: fraction of each patch's pixels inside ``box``
    (top, left, h, w)."""
    top, left, h, w = box

    def overlap(n_patches: int, lo: int, hi: int) -> np.ndarray:
        starts = np.arange(n_patches) * patch
        return np.clip(np.minimum(starts + patch, hi) - np.maximum(starts, lo), 0, patch)

    rows = overlap(size_hw[0] // patch, top, top + h)
    cols = overlap(size_hw[1] // patch, left, left + w)
    return np.float32(rows[:, None] * cols[None, :]) / np.float32(patch * patch)


def to_patches(
    canvas: np.ndarray, origins: Sequence[tuple[int, int]], cfg: ImagePreprocessConfig, out: np.ndarray
) -> None:
    """Copy the crops at pixel ``origins`` (y0, x0) of ``canvas`` ``[H, W, 3]`` into ``out`` ``[n, P, D]``."""
    n, ps = cfg.patches_per_side, cfg.patch_size
    for k, (y0, x0) in enumerate(origins):
        crop = canvas[y0 : y0 + cfg.crop_size, x0 : x0 + cfg.crop_size]
        view = crop.reshape(n, ps, n, ps, 3).transpose(0, 2, 1, 3, 4)
        out[k].reshape(n, n, ps, ps, 3)[...] = view


def select_tiling(h: float, w: float, window: int, max_crops: int) -> tuple[int, int]:
    """(rows, cols) of crop windows for an ``h x w`` image (the original's ``select_tiling``).

    Prefers the tiling needing the smallest upscale that fits; if every tiling needs shrinking, the
    one shrinking least. Ties go to fewer crops, then fewer rows. Sizes <= 0 (images smaller than
    the margins) give scale inf (side exactly 0) or negative scales, i.e. the other side decides
    or 1x1.
    """
    tilings = sorted(
        ((i, j) for i in range(1, max_crops + 1) for j in range(1, max_crops + 1) if i * j <= max_crops),
        key=lambda t: (t[0] * t[1], t[0]),
    )
    cands = np.asarray(tilings, np.int32)
    res = (cands * window).astype(np.float32)
    with np.errstate(divide="ignore"):
        scale = np.min(res / np.asarray([h, w], np.float32), axis=-1)
    if np.all(scale < 1):
        ix = int(np.argmax(scale))
    else:
        ix = int(np.argmin(np.where(scale < 1.0, np.float32(1e10), scale)))
    return int(cands[ix][0]), int(cands[ix][1])


def _token_block(rows: int, cols: int, ids: ImageTokenIds, use_col: bool) -> np.ndarray:
    row = [ids.patch] * cols + ([ids.col] if use_col else [])
    return np.asarray([ids.start] + row * rows + [ids.end], np.int32)


def _patch_positions(block: np.ndarray, ids: ImageTokenIds, offset: int) -> np.ndarray:
    return np.nonzero(block == ids.patch)[0].astype(np.int32) + offset


def _kept_range(index: int, count: int, cfg: ImagePreprocessConfig, pool: int) -> tuple[int, int]:
    """(first pooled cell, number of pooled cells) a crop keeps along one axis."""
    left, right = cfg.overlap_margins
    size = cfg.window_patches + (left if index == 0 else 0) + (right if index == count - 1 else 0)
    first = 0 if index == 0 else left // pool
    return first, -(-size // pool)


def image_to_inputs(image: np.ndarray, cfg: ImagePreprocessConfig, ids: ImageTokenIds) -> ImageInputs:
    """uint8 ``[H, W, 3]`` -> crops, masks, image tokens and patch index (see the module docstring)."""
    cs, T = cfg.crop_size, cfg.tokens_per_crop
    glob_block = _token_block(cfg.tokens_h, cfg.tokens_w, ids, cfg.use_col_tokens)
    glob_index = _patch_positions(glob_block, ids, 0)

    if cfg.crop_mode == "resize":
        canvas, box = letterbox(image, (cs, cs), cfg)
        crops = np.empty((1, cfg.patches_per_crop, cfg.patch_dim), np.float32)
        to_patches(canvas, [(0, 0)], cfg, crops)
        masks = None
        if cfg.image_padding_mask:
            masks = patch_coverage(box, (cs, cs), cfg.patch_size).reshape(1, -1)
        return ImageInputs(crops, masks, glob_block, glob_index.reshape(1, T))

    rows, cols = select_tiling(
        image.shape[0] - cfg.margin_px, image.shape[1] - cfg.margin_px, cfg.window_px, cfg.max_crops
    )
    canvas_hw = (rows * cfg.window_px + cfg.margin_px, cols * cfg.window_px + cfg.margin_px)
    cache: dict = {}
    canvas, box = letterbox(image, canvas_hw, cfg, cache)
    glob, _ = letterbox(image, (cs, cs), cfg, cache)

    origins = [(i * cfg.window_px, j * cfg.window_px) for i in range(rows) for j in range(cols)]
    crops = np.empty((1 + len(origins), cfg.patches_per_crop, cfg.patch_dim), np.float32)
    to_patches(glob, [(0, 0)], cfg, crops[:1])
    to_patches(canvas, origins, cfg, crops[1:])

    # Global pooled grid of the high-res crops: which cell of which crop lands where.
    row_ranges = [_kept_range(i, rows, cfg, cfg.pooling_h) for i in range(rows)]
    col_ranges = [_kept_range(j, cols, cfg, cfg.pooling_w) for j in range(cols)]
    grid_h, grid_w = sum(n for _, n in row_ranges), sum(n for _, n in col_ranges)
    hires_block = _token_block(grid_h, grid_w, ids, cfg.use_col_tokens)
    hires_pos = _patch_positions(hires_block, ids, len(glob_block)).reshape(grid_h, grid_w)

    patch_index = np.full((1 + len(origins), cfg.tokens_h, cfg.tokens_w), -100, np.int32)
    patch_index[0] = glob_index.reshape(cfg.tokens_h, cfg.tokens_w)
    r0 = 0
    for i, (fy, ny) in enumerate(row_ranges):
        c0 = 0
        for j, (fx, nx) in enumerate(col_ranges):
            patch_index[1 + i * cols + j, fy : fy + ny, fx : fx + nx] = hires_pos[r0 : r0 + ny, c0 : c0 + nx]
            c0 += nx
        r0 += ny

    masks = None
    if cfg.image_padding_mask:
        coverage = patch_coverage(box, canvas_hw, cfg.patch_size)
        n, ps = cfg.patches_per_side, cfg.patch_size
        hires = [coverage[y0 // ps : y0 // ps + n, x0 // ps : x0 // ps + n].reshape(-1) for y0, x0 in origins]
        # The original pads the high-res masks with one row of -1 at the end and pairs them with the
        # crops (global first): the global view gets crop 0's mask and the last crop gets -1.
        masks = np.stack(hires + [np.full(cfg.patches_per_crop, -1.0, np.float32)])
    return ImageInputs(crops, masks, np.concatenate([glob_block, hires_block]), patch_index.reshape(-1, T))


def image_token_count(height: int, width: int, cfg: ImagePreprocessConfig) -> int:
    """Number of image tokens (incl. start/end/col tokens) an ``height x width`` image produces."""
    per_row = cfg.tokens_w + int(cfg.use_col_tokens)
    glob = cfg.tokens_h * per_row + 2
    if cfg.crop_mode == "resize":
        return glob
    rows, cols = select_tiling(height - cfg.margin_px, width - cfg.margin_px, cfg.window_px, cfg.max_crops)
    grid_h = sum(_kept_range(i, rows, cfg, cfg.pooling_h)[1] for i in range(rows))
    grid_w = sum(_kept_range(j, cols, cfg, cfg.pooling_w)[1] for j in range(cols))
    return glob + grid_h * (grid_w + int(cfg.use_col_tokens)) + 2
