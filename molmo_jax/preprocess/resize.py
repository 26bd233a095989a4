"""Separable image resampling that reproduces PyTorch's CPU ``interpolate`` bit for bit (or nearly).

Molmo's released preprocessing resizes float32 images in [0, 1] with
``torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)``
(through ``torchvision.transforms.Resize``). PyTorch computes that as two 1-D passes, the width first
and then the height, each a weighted sum over a window of input pixels whose weights come from a
triangle filter stretched by ``1 / scale`` when shrinking (PIL's antialiasing scheme). Here every
1-D pass is a sparse ``[out, in]`` resampling matrix, built once per (in, out) size pair with the same
float32 arithmetic PyTorch uses (including its float/double promotions and ``int()`` truncations)
and applied with a float32 sparse matmul, which sums the taps in PyTorch's order.

The uint8 code paths that training-only backbones use (SigLIP: bilinear without antialiasing;
DINOv2 / MetaCLIP: bicubic with antialiasing) follow PyTorch's fixed-point uint8 kernels: double
weights rounded to int16 with a per-matrix precision, integer accumulation, rounding and clamping.
They have no golden vectors; the float path is pinned by the golden preprocessing cases.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import scipy.sparse as sp

Filter = Literal["bilinear", "bicubic"]

_F32 = np.float32


def _triangle(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _keys_cubic(a: float):
    def fn(x: float) -> float:
        x = abs(x)
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        if x < 2.0:
            return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        return 0.0

    return fn


def _aa_taps_f32(in_size: int, out_size: int, interp_size: int, filt) -> list[tuple[int, np.ndarray]]:
    """PyTorch ``_compute_indices_min_size_weights_aa`` for float32 tensors: (xmin, weights) per output."""
    scale = _F32(in_size) / _F32(out_size)  # area_pixel_compute_scale<float>
    support = _F32(interp_size * 0.5 * float(scale)) if scale >= 1.0 else _F32(interp_size * 0.5)
    max_taps = int(math.ceil(float(support))) * 2 + 1
    invscale = _F32(1.0 / float(scale)) if scale >= 1.0 else _F32(1.0)
    taps = []
    for i in range(out_size):
        center = _F32(float(scale) * (i + 0.5))  # float * double -> double -> stored as float
        xmin = max(int(float(center - support) + 0.5), 0)
        xsize = min(int(float(center + support) + 0.5), in_size) - xmin
        xsize = min(max(xsize, 0), max_taps)
        w = np.empty(xsize, np.float32)
        total = _F32(0.0)
        for j in range(xsize):
            # (int - float) is float; + 0.5 and * invscale happen in double; the filter takes a float.
            arg = _F32((float(_F32(j + xmin) - center) + 0.5) * float(invscale))
            w[j] = _F32(filt(float(arg)))
            total = _F32(total + w[j])
        if total != 0.0:
            w = w / total
        taps.append((xmin, w))
    return taps


def _aa_taps_f64(in_size: int, out_size: int, interp_size: int, filt) -> list[tuple[int, np.ndarray]]:
    """The same weights computed in double, as PyTorch does before quantising them for uint8 images."""
    scale = in_size / out_size
    support = interp_size * 0.5 * scale if scale >= 1.0 else interp_size * 0.5
    max_taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = []
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(max(min(int(center + support + 0.5), in_size) - xmin, 0), max_taps)
        w = np.array([filt((j + xmin - center + 0.5) * invscale) for j in range(xsize)], np.float64)
        total = w.sum() if xsize else 0.0
        if total != 0.0:
            w = w / total
        taps.append((xmin, w))
    return taps


def _bilinear_noaa_taps_f64(in_size: int, out_size: int) -> list[tuple[int, np.ndarray]]:
    """PyTorch ``_compute_indices_min_size_weights`` (bilinear, antialias=False, align_corners=False)."""
    scale = in_size / out_size
    taps = []
    for i in range(out_size):
        real = max(scale * (i + 0.5) - 0.5, 0.0)
        index = min(int(math.floor(real)), in_size - 1)
        lam = min(max(real - index, 0.0), 1.0)
        index_min = max(index, 0)
        index_size = min(index + 2, in_size) - index_min
        w = np.zeros(max(index_size, 1), np.float64)
        # taps at unbounded positions index, index + 1; out-of-range taps fold into the last valid one
        for j, weight in enumerate((1.0 - lam, lam)):
            w[min(j, index_size - 1)] += weight
        taps.append((index_min, w[:index_size]))
    return taps


def _to_matrix(taps: list[tuple[int, np.ndarray]], in_size: int, dtype) -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    for i, (xmin, w) in enumerate(taps):
        rows.extend([i] * len(w))
        cols.extend(range(xmin, xmin + len(w)))
        vals.extend(w.tolist())
    mat = sp.csr_matrix((np.asarray(vals, dtype), (rows, cols)), shape=(len(taps), in_size))
    mat.sort_indices()  # ascending input index = PyTorch's summation order
    return mat


@functools.lru_cache(maxsize=512)
def float_resample_matrix(in_size: int, out_size: int, filt: Filter = "bilinear") -> sp.csr_matrix:
    """Sparse float32 ``[out_size, in_size]`` matrix of one antialiased 1-D pass on float32 images."""
    if filt == "bilinear":
        taps = _aa_taps_f32(in_size, out_size, 2, _triangle)
    else:
        taps = _aa_taps_f32(in_size, out_size, 4, _keys_cubic(-0.5))
    return _to_matrix(taps, in_size, np.float32)


@functools.lru_cache(maxsize=512)
def uint8_resample_matrix(
    in_size: int, out_size: int, filt: Filter, antialias: bool
) -> tuple[sp.csr_matrix, int]:
    """Int16-quantised weights (stored as float64) and their precision, as PyTorch's uint8 kernels use."""
    if filt == "bilinear" and not antialias:
        taps = _bilinear_noaa_taps_f64(in_size, out_size)
    elif filt == "bilinear":
        taps = _aa_taps_f64(in_size, out_size, 2, _triangle)
    elif antialias:
        taps = _aa_taps_f64(in_size, out_size, 4, _keys_cubic(-0.5))
    else:
        raise NotImplementedError("uint8 bicubic without antialiasing is not used by Molmo")
    w_max = max((float(w.max()) for _, w in taps if len(w)), default=0.0)
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    quantised = []
    for xmin, w in taps:
        v = w * (1 << precision)
        quantised.append((xmin, np.where(v < 0, np.trunc(-0.5 + v), np.trunc(0.5 + v))))
    return _to_matrix(quantised, in_size, np.float64), precision


def swap_hw(x: np.ndarray) -> np.ndarray:
    """Contiguous ``[A, B, C]`` -> contiguous ``[B, A, C]``, moving each pixel's C values as one unit
    (several times faster than a plain numpy transpose with a small trailing axis)."""
    pixel = np.dtype((np.void, x.dtype.itemsize * x.shape[2]))
    moved = np.ascontiguousarray(np.ascontiguousarray(x).view(pixel)[:, :, 0].T)
    return moved.view(x.dtype).reshape(x.shape[1], x.shape[0], x.shape[2])


def _apply_along_rows(mat: sp.csr_matrix, x: np.ndarray) -> np.ndarray:
    """``mat @ x`` contracting axis 0 of ``x`` ([in, ...] -> [out, ...])."""
    out = mat @ x.reshape(x.shape[0], -1)
    return np.asarray(out).reshape((mat.shape[0],) + x.shape[1:])


def to_float_wh(image_u8: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> float32 ``[W, H, C]`` in [0, 1] (``x / 255`` as torchvision's
    ``convert_image_dtype``), the input layout of :func:`resize_float`; compute it once per image."""
    x = swap_hw(image_u8).astype(np.float32)
    x /= _F32(255.0)
    return x


def resize_float(image_wh: np.ndarray, out_hw: tuple[int, int], filt: Filter = "bilinear") -> np.ndarray:
    """float32 ``[W, H, C]`` (from :func:`to_float_wh`) -> float32 ``[h, w, C]``, antialiased resize.

    Equals torchvision ``Resize(out_hw, antialias=True)`` on the float32 CHW image followed by
    ``clip(0, 1)``: width pass first, then height; a pass whose size does not change is skipped (it
    would be the identity). ``image_wh`` is not modified.
    """
    h_out, w_out = out_hw
    w_in, h_in = image_wh.shape[:2]
    x = image_wh
    if w_out != w_in:
        x = _apply_along_rows(float_resample_matrix(w_in, w_out, filt), x)
    x = swap_hw(x)  # [H, w, C], always a new array
    if h_out != h_in:
        x = _apply_along_rows(float_resample_matrix(h_in, h_out, filt), x)
    np.clip(x, 0.0, 1.0, out=x)
    return x


def resize_uint8(image_u8: np.ndarray, out_hw: tuple[int, int], filt: Filter, antialias: bool) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> uint8 ``[h, w, C]`` with PyTorch's fixed-point uint8 resampling."""
    h_out, w_out = out_hw
    h_in, w_in = image_u8.shape[:2]

    def one_pass(mat_prec: tuple[sp.csr_matrix, int], x: np.ndarray) -> np.ndarray:
        mat, precision = mat_prec
        acc = _apply_along_rows(mat, x.astype(np.float64))  # integer sums, exact in float64
        acc = np.floor((acc + (1 << (precision - 1))) / (1 << precision)) if precision else acc
        return np.clip(acc, 0, 255).astype(np.uint8)

    x = swap_hw(image_u8)
    if w_out != w_in:
        x = one_pass(uint8_resample_matrix(w_in, w_out, filt, antialias), x)
    x = swap_hw(x)
    if h_out != h_in:
        x = one_pass(uint8_resample_matrix(h_in, h_out, filt, antialias), x)
    return x
