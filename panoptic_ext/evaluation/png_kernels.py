"""Compiled (numba) loops of the PQ evaluation: PNG scanlines to segment ids, and the pixel
counts of (gt id, predicted id) pairs, read row by row straight from the scanlines.

Panoptic maps are long runs of a few ids, and many rows repeat the row above (a PNG encoder
stores them as an "Up" row of zeros). So the loops skip repeated rows (their counts are the
previous row's, once more), and count runs, not pixels, with a small hash table.

Importing this module imports numba; the functions compile on first use and are cached on disk
(``cache=True``). They release the GIL, so threads decode and match images in parallel.
"""

import numpy as np
from numba import njit

__all__ = ["unfilter_to_ids", "pair_counts", "ID_LIMIT"]

ID_LIMIT = 1 << 24
# Fibonacci hashing multiplier (2**64 / golden ratio) as a wrapping signed 64-bit integer.
_HASH_MULT = -7046029254386353131

# pair_counts status codes.
OK, GT_FILTER_ERROR, PRED_FILTER_ERROR, ID_OUT_OF_RANGE = 0, 1, 2, 3


@njit(cache=True, nogil=True, inline="always")
def _paeth(a, b, c):  # pragma: no cover - compiled
    """The Paeth predictor of bytes a (left), b (up), c (up-left)."""
    a = np.int32(a)
    b = np.int32(b)
    c = np.int32(c)
    pa = abs(b - c)
    pb = abs(a - c)
    pc = abs(a + b - 2 * c)
    if pa <= pb and pa <= pc:
        return a
    if pb <= pc:
        return b
    return c


# Sub and Paeth depend on the pixel to the left, so they cannot be vectorised; the loops below
# keep that pixel in registers as uint8 (one variable per channel; ``bpp`` is a constant 3 or 4
# once inlined), which is ~3x faster than reading it back from ``dst``.


@njit(cache=True, nogil=True, inline="always")
def _sub_row(src, dst, bpp):  # pragma: no cover - compiled
    a0, a1, a2 = src[0], src[1], src[2]
    a3 = src[3] if bpp == 4 else np.uint8(0)
    dst[0], dst[1], dst[2] = a0, a1, a2
    if bpp == 4:
        dst[3] = a3
    for x in range(1, src.shape[0] // bpp):
        i = bpp * x
        a0 = np.uint8(a0 + src[i])
        a1 = np.uint8(a1 + src[i + 1])
        a2 = np.uint8(a2 + src[i + 2])
        dst[i], dst[i + 1], dst[i + 2] = a0, a1, a2
        if bpp == 4:
            a3 = np.uint8(a3 + src[i + 3])
            dst[i + 3] = a3


@njit(cache=True, nogil=True, inline="always")
def _paeth_row(src, prv, dst, bpp):  # pragma: no cover - compiled
    # First pixel: a = c = 0, so the predictor is b.
    a0 = np.uint8(src[0] + prv[0])
    a1 = np.uint8(src[1] + prv[1])
    a2 = np.uint8(src[2] + prv[2])
    a3 = np.uint8(src[3] + prv[3]) if bpp == 4 else np.uint8(0)
    dst[0], dst[1], dst[2] = a0, a1, a2
    if bpp == 4:
        dst[3] = a3
    for x in range(1, src.shape[0] // bpp):
        i = bpp * x
        j = i - bpp
        same = prv[i] == prv[j] and prv[i + 1] == prv[j + 1] and prv[i + 2] == prv[j + 2]
        if bpp == 4:
            same = same and prv[i + 3] == prv[j + 3]
        if same:
            # The pixel above equals the one above-left: the predictor is the left pixel (the
            # common case in panoptic maps: a cheap, predictable branch).
            a0 = np.uint8(a0 + src[i])
            a1 = np.uint8(a1 + src[i + 1])
            a2 = np.uint8(a2 + src[i + 2])
            if bpp == 4:
                a3 = np.uint8(a3 + src[i + 3])
        else:
            a0 = np.uint8(src[i] + _paeth(a0, prv[i], prv[j]))
            a1 = np.uint8(src[i + 1] + _paeth(a1, prv[i + 1], prv[j + 1]))
            a2 = np.uint8(src[i + 2] + _paeth(a2, prv[i + 2], prv[j + 2]))
            if bpp == 4:
                a3 = np.uint8(src[i + 3] + _paeth(a3, prv[i + 3], prv[j + 3]))
        dst[i], dst[i + 1], dst[i + 2] = a0, a1, a2
        if bpp == 4:
            dst[i + 3] = a3


@njit(cache=True, nogil=True, inline="always")
def _unfilter_row(kind, src, prv, dst, bpp):  # pragma: no cover - compiled
    """One scanline: ``dst`` = ``src`` (filtered bytes) unfiltered against ``prv``."""
    n = src.shape[0]
    if kind == 0:  # None
        for i in range(n):
            dst[i] = src[i]
    elif kind == 2:  # Up
        for i in range(n):
            dst[i] = src[i] + prv[i]
    elif kind == 3:  # Average (rare)
        for i in range(bpp):
            dst[i] = src[i] + (prv[i] >> 1)
        for i in range(bpp, n):
            dst[i] = src[i] + ((np.int32(dst[i - bpp]) + np.int32(prv[i])) >> 1)
    elif kind == 1:  # Sub, with a constant pixel size for the compiler
        if bpp == 3:
            _sub_row(src, dst, 3)
        else:
            _sub_row(src, dst, 4)
    elif bpp == 3:  # Paeth
        _paeth_row(src, prv, dst, 3)
    else:
        _paeth_row(src, prv, dst, 4)


@njit(cache=True, nogil=True, inline="always")
def _pack_ids(row, bpp, ids):  # pragma: no cover - compiled
    """R + 256 G + 256^2 B of each pixel of an unfiltered RGB (bpp 3) / RGBA (4) row."""
    # A constant stride lets the compiler vectorise the loop.
    if bpp == 3:
        for x in range(ids.shape[0]):
            ids[x] = (
                np.int32(row[3 * x])
                | (np.int32(row[3 * x + 1]) << 8)
                | (np.int32(row[3 * x + 2]) << 16)
            )
    else:
        for x in range(ids.shape[0]):
            ids[x] = (
                np.int32(row[4 * x])
                | (np.int32(row[4 * x + 1]) << 8)
                | (np.int32(row[4 * x + 2]) << 16)
            )


@njit(cache=True, nogil=True, inline="always")
def _all_zero(values):  # pragma: no cover - compiled
    acc = np.uint8(0)
    for i in range(values.shape[0]):
        acc |= values[i]
    return acc == 0


@njit(cache=True, nogil=True, inline="always")
def _same_row(a, b):  # pragma: no cover - compiled
    acc = 0
    for i in range(a.shape[0]):
        acc |= a[i] ^ b[i]
    return acc == 0


@njit(cache=True, nogil=True, inline="always")
def _next_png_row(data, y, bpp, rows, prev):  # pragma: no cover - compiled
    """
    Unfilter scanline ``y``. ``rows`` (3, stride) holds the last two unfiltered rows,
    ``rows[prev]`` the one above (``rows[2]``, zeros, above row 0).

    Returns:
        (prev, status): the new ``prev`` (``rows[prev]`` is row ``y``); status 0 = decoded,
        1 = the same as the row above (nothing done), -1 = unknown filter type.
    """
    stride = rows.shape[1]
    pos = y * (stride + 1)
    kind = data[pos]
    src = data[pos + 1 : pos + 1 + stride]
    if kind == 2 and y > 0 and _all_zero(src):
        return prev, 1
    if kind > 4:
        return prev, -1
    cur = 1 if prev == 0 else 0
    _unfilter_row(kind, src, rows[prev], rows[cur], bpp)
    return cur, 0


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
    rows = np.zeros((3, width * bpp), np.uint8)
    prev = 2
    for y in range(height):
        prev, status = _next_png_row(data, y, bpp, rows, prev)
        if status == 0:
            _pack_ids(rows[prev], bpp, out[y])
        elif status == 1:
            out[y] = out[y - 1]
        else:
            return y
    return -1


@njit(cache=True, nogil=True, inline="always")
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
def _grow(keys, counts):  # pragma: no cover - compiled
    new_keys = np.full(2 * keys.shape[0], -1, np.int64)
    new_counts = np.zeros(2 * keys.shape[0], np.int64)
    for s in range(keys.shape[0]):
        if keys[s] != -1:
            _insert(new_keys, new_counts, keys[s], counts[s])
    return new_keys, new_counts


@njit(cache=True, nogil=True, inline="always")
def _pixel_changes(row, bpp, changes):  # pragma: no cover - compiled
    """changes[x] = 1 where pixel x of an unfiltered row differs from pixel x - 1 in R, G or B
    (x >= 1; alpha is not part of the id)."""
    for x in range(1, changes.shape[0]):
        o = bpp * x
        changes[x] = (
            (row[o] != row[o - bpp])
            | (row[o + 1] != row[o + 1 - bpp])
            | (row[o + 2] != row[o + 2 - bpp])
        )


@njit(cache=True, nogil=True, inline="always")
def _mark_changes(bpp, row, id_row, mask):  # pragma: no cover - compiled
    """``mask[1:width]`` = where ids change along a row given as unfiltered bytes (bpp 3 / 4)
    or as ids (bpp 0); ``mask[0]`` and ``mask[width:]`` stay 1."""
    width = id_row.shape[0] if bpp == 0 else row.shape[0] // bpp
    changes = mask[:width]
    if bpp == 0:
        for x in range(1, width):
            changes[x] = id_row[x] != id_row[x - 1]
    elif bpp == 3:  # constant pixel sizes for the compiler
        _pixel_changes(row, 3, changes)
    else:
        _pixel_changes(row, 4, changes)


@njit(cache=True, nogil=True, inline="always")
def _id_at(bpp, row, id_row, x):  # pragma: no cover - compiled
    if bpp == 0:
        return np.int64(id_row[x])
    o = bpp * x
    return np.int64(row[o]) | (np.int64(row[o + 1]) << 8) | (np.int64(row[o + 2]) << 16)


@njit(cache=True, nogil=True, inline="always")
def _row_runs(
    width, g_bpp, g_row, g_ids, g_mask, p_bpp, p_row, p_ids, p_mask, run_keys, run_lens
):  # pragma: no cover - compiled
    """
    Runs of equal (gt, pred) ids along a row: their keys (gt * 2**24 + pred) and lengths.
    ``*_mask`` mark where each image's ids change (see :func:`_mark_changes`); they are scanned
    8 pixels at a time. Returns the number of runs, or -1 if an id is outside [0, 2**24).
    """
    g_words = g_mask.view(np.uint64)
    p_words = p_mask.view(np.uint64)
    n = 0
    start = 0
    for w in range(g_words.shape[0]):
        if (g_words[w] | p_words[w]) == 0:
            continue
        for x in range(max(8 * w, 1), min(8 * w + 8, width + 1)):
            if x == width or g_mask[x] or p_mask[x]:
                a = _id_at(g_bpp, g_row, g_ids, start)
                b = _id_at(p_bpp, p_row, p_ids, start)
                if a < 0 or a >= ID_LIMIT or b < 0 or b >= ID_LIMIT:
                    return -1
                run_keys[n] = a * ID_LIMIT + b
                run_lens[n] = x - start
                n += 1
                start = x
    return n


@njit(cache=True, nogil=True, inline="always")
def _advance_row(y, data, bpp, id_map, rows, prev, ids, mask):  # pragma: no cover - compiled
    """
    Move one image of :func:`pair_counts` to row ``y``: given as PNG scanlines (``bpp`` 3 / 4,
    unfiltered into ``rows``, see :func:`_next_png_row`) or as an id map (``bpp`` 0, ``ids``
    becomes its row ``y``); where the row differs from the one above, ``mask`` is updated
    (:func:`_mark_changes`).

    Returns:
        (ids, prev, status): status 0 = a new row, 1 = the same as the row above, -1 = unknown
        PNG filter type.
    """
    if bpp == 0:
        ids = id_map[y]
        status = 1 if y > 0 and _same_row(ids, id_map[y - 1]) else 0
    else:
        prev, status = _next_png_row(data, y, bpp, rows, prev)
        if status < 0:
            return ids, prev, status
    if status == 0:
        _mark_changes(bpp, rows[prev], ids, mask)
    return ids, prev, status


@njit(cache=True, nogil=True)
def pair_counts(g_data, g_bpp, g_map, p_data, p_bpp, p_map, height, width):  # pragma: no cover
    """
    Pixel counts of every (gt id, predicted id) pair of two images, each given either as PNG
    scanlines (``*_data`` and ``*_bpp`` 3 or 4, as :func:`unfilter_to_ids` takes them) or as an
    id map (``*_bpp`` 0 and ``*_map``, (height, width) int32).

    Returns:
        (keys, counts, status, row): int64 arrays, key = gt id * 2**24 + predicted id, in no
        particular order; status OK, GT_FILTER_ERROR / PRED_FILTER_ERROR (unknown filter type in
        ``row``) or ID_OUT_OF_RANGE (an id map has an id outside [0, 2**24)).
    """
    keys = np.full(1024, -1, np.int64)
    counts = np.zeros(1024, np.int64)
    used = 0
    g_rows = np.zeros((3, max(1, width * g_bpp)), np.uint8)
    p_rows = np.zeros((3, max(1, width * p_bpp)), np.uint8)
    g_prev = 2
    p_prev = 2
    no_ids = np.zeros(1, np.int32)
    g_mask = np.ones(8 * (width // 8 + 1), np.uint8)
    p_mask = np.ones(8 * (width // 8 + 1), np.uint8)
    run_keys = np.zeros(width, np.int64)
    run_lens = np.zeros(width, np.int64)
    num_runs = 0
    repeat = 0  # how many times the runs in run_keys / run_lens occur
    g_ids = no_ids
    p_ids = no_ids
    for y in range(height + 1):
        if y < height:
            g_ids, g_prev, g_status = _advance_row(
                y, g_data, g_bpp, g_map, g_rows, g_prev, g_ids, g_mask
            )
            if g_status < 0:
                return keys[:0], counts[:0], GT_FILTER_ERROR, y
            p_ids, p_prev, p_status = _advance_row(
                y, p_data, p_bpp, p_map, p_rows, p_prev, p_ids, p_mask
            )
            if p_status < 0:
                return keys[:0], counts[:0], PRED_FILTER_ERROR, y
            if g_status == 1 and p_status == 1:
                repeat += 1
                continue
        for r in range(num_runs):  # flush the previous distinct row
            used += _insert(keys, counts, run_keys[r], run_lens[r] * repeat)
            if 2 * used > keys.shape[0]:  # keep the load factor at most 1/2
                keys, counts = _grow(keys, counts)
        if y == height:
            break
        num_runs = _row_runs(
            width,
            g_bpp,
            g_rows[g_prev],
            g_ids,
            g_mask,
            p_bpp,
            p_rows[p_prev],
            p_ids,
            p_mask,
            run_keys,
            run_lens,
        )
        if num_runs < 0:
            return keys[:0], counts[:0], ID_OUT_OF_RANGE, y
        repeat = 1
    filled = keys != -1
    return keys[filled], counts[filled], OK, -1
