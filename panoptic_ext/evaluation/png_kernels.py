"""Compiled (numba) loops of the PQ evaluation: PNG scanline unfiltering into segment ids, and
the joint histogram of two id maps.

Importing this module imports numba; the functions compile on first use and are cached on disk
(``cache=True``). They release the GIL, so threads decode and match images in parallel.
"""

import numpy as np
from numba import njit

__all__ = ["unfilter_to_ids", "joint_counts"]

_ID_LIMIT = 1 << 24
# Fibonacci hashing multiplier (2**64 / golden ratio) as a wrapping signed 64-bit integer.
_HASH_MULT = -7046029254386353131


@njit(cache=True, nogil=True, inline="always")
def _unfilter_row(kind, src, prv, dst, bpp):  # pragma: no cover - compiled
    """One scanline: ``dst`` = ``src`` (filtered bytes) unfiltered against ``prv``."""
    n = src.shape[0]
    if kind == 0:  # None
        for i in range(n):
            dst[i] = src[i]
    elif kind == 1:  # Sub
        for i in range(bpp):
            dst[i] = src[i]
        for i in range(bpp, n):
            dst[i] = src[i] + dst[i - bpp]
    elif kind == 2:  # Up
        for i in range(n):
            dst[i] = src[i] + prv[i]
    elif kind == 3:  # Average
        for i in range(bpp):
            dst[i] = src[i] + (prv[i] >> 1)
        for i in range(bpp, n):
            dst[i] = src[i] + ((np.int32(dst[i - bpp]) + np.int32(prv[i])) >> 1)
    else:  # Paeth
        for i in range(bpp):
            dst[i] = src[i] + prv[i]  # a = c = 0: the predictor is b
        for i in range(bpp, n):
            a = np.int32(dst[i - bpp])
            b = np.int32(prv[i])
            c = np.int32(prv[i - bpp])
            pa = abs(b - c)
            pb = abs(a - c)
            pc = abs(a + b - 2 * c)
            if pa <= pb and pa <= pc:
                dst[i] = src[i] + a
            elif pb <= pc:
                dst[i] = src[i] + b
            else:
                dst[i] = src[i] + c


@njit(cache=True, nogil=True, inline="always")
def _scanlines_to_ids(data, height, width, bpp, out):  # pragma: no cover - compiled
    stride = width * bpp
    rows = np.zeros((3, stride), np.uint8)  # rows[2] stays zero: the row above row 0
    for y in range(height):
        pos = y * (stride + 1)
        kind = data[pos]
        if kind > 4:
            return y
        dst = rows[y & 1]
        _unfilter_row(
            kind,
            data[pos + 1 : pos + 1 + stride],
            rows[2] if y == 0 else rows[(y + 1) & 1],
            dst,
            bpp,
        )
        ids = out[y]
        for x in range(width):
            o = x * bpp
            ids[x] = np.int32(dst[o]) | (np.int32(dst[o + 1]) << 8) | (np.int32(dst[o + 2]) << 16)
    return -1


@njit(cache=True, nogil=True)
def unfilter_to_ids(data, height, width, bpp, out):  # pragma: no cover - compiled
    """
    Reverse the PNG filters of 8-bit scanlines and store R + 256 G + 256^2 B per pixel.

    Args:
        data (ndarray): (height * (1 + width * bpp),) uint8 inflated IDAT data (each scanline:
            a filter-type byte, then width * bpp bytes).
        height, width (int): image size.
        bpp (int): bytes per pixel, 3 (RGB) or 4 (RGBA; alpha is ignored).
        out (ndarray): (height, width) int32 output.

    Returns:
        int: -1 on success, else the index of the first row with an unknown filter type.
    """
    # A constant bytes-per-pixel lets the compiler vectorise the loops.
    if bpp == 3:
        return _scanlines_to_ids(data, height, width, 3, out)
    return _scanlines_to_ids(data, height, width, 4, out)


@njit(cache=True, nogil=True)
def _insert(keys, counts, key, count):  # pragma: no cover - compiled
    """Add ``count`` to ``key`` in an open-addressing table; returns 1 if the key is new."""
    mask = keys.shape[0] - 1
    slot = ((key * _HASH_MULT) >> 40) & mask
    while True:
        k = keys[slot]
        if k == key:
            counts[slot] += count
            return 0
        if k == -1:
            keys[slot] = key
            counts[slot] = count
            return 1
        slot = (slot + 1) & mask


@njit(cache=True, nogil=True)
def joint_counts(gt, pred):  # pragma: no cover - compiled
    """
    Pixel counts of every (gt id, predicted id) pair of two equally long id arrays.

    Args:
        gt, pred (ndarray): (N,) int32 segment ids.

    Returns:
        (keys, counts, ok): int64 arrays, key = gt id * 2**24 + predicted id, in no particular
        order; ``ok`` is False (and the arrays empty) when an id is outside [0, 2**24).
    """
    n = gt.shape[0]
    keys = np.full(1024, -1, np.int64)
    counts = np.zeros(1024, np.int64)
    used = 0
    i = 0
    while i < n:
        g = gt[i]
        p = pred[i]
        if g < 0 or g >= _ID_LIMIT or p < 0 or p >= _ID_LIMIT:
            return keys[:0], counts[:0], False
        j = i + 1
        while j < n and gt[j] == g and pred[j] == p:  # runs are long in panoptic maps
            j += 1
        used += _insert(keys, counts, np.int64(g) * _ID_LIMIT + p, j - i)
        if 2 * used > keys.shape[0]:  # keep the load factor at most 1/2
            old_keys, old_counts = keys, counts
            keys = np.full(2 * old_keys.shape[0], -1, np.int64)
            counts = np.zeros(2 * old_keys.shape[0], np.int64)
            for s in range(old_keys.shape[0]):
                if old_keys[s] != -1:
                    _insert(keys, counts, old_keys[s], old_counts[s])
        i = j
    filled = keys != -1
    return keys[filled], counts[filled], True
