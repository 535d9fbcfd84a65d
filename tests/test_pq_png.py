"""The fast panoptic PNG reader (libdeflate + compiled unfiltering) and the compiled joint
counts: every PNG filter type, odd sizes, RGBA, fallbacks to the general decoder, clear errors on
truncated / corrupt files, and equality with the numpy / libpng paths."""

import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from panoptic_ext.evaluation import (
    id_to_rgb,
    panoptic_files,
    png_reader,
    pq_compute,
    pq_image,
    read_panoptic_png,
    rgb_to_id,
    segment_matching,
)
from panoptic_ext.evaluation.panoptic_files import pq_image_of_files
from panoptic_ext.evaluation.testing import (
    DEFAULT_CATEGORIES,
    random_panoptic_pair,
    write_panoptic_files,
)

pytestmark = pytest.mark.skipif(
    png_reader.fast_kernels() is None, reason="numba / deflate not installed"
)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_row(kind, row, prev, bpp):
    """PNG filter ``kind`` of one scanline (int arrays), as an encoder applies it."""
    left = np.concatenate([np.zeros(bpp, int), row[:-bpp]])
    up_left = np.concatenate([np.zeros(bpp, int), prev[:-bpp]])
    predictor = {
        0: np.zeros_like(row),
        1: left,
        2: prev,
        3: (left + prev) // 2,
        4: _paeth(left, prev, up_left),
    }[kind]
    return (row - predictor) % 256


ADAM7 = [
    (0, 0, 8, 8),
    (0, 4, 8, 8),
    (4, 0, 8, 4),
    (0, 2, 4, 4),
    (2, 0, 4, 2),
    (0, 1, 2, 2),
    (1, 0, 2, 1),
]


def _chunk(kind, payload):
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def encode_png(pixels, filters, color_type=None, idat_parts=1, interlace=0):
    """A PNG of (H, W, C) uint8 ``pixels`` with the given filter type per row."""
    h, w, c = pixels.shape
    color_type = {3: 2, 4: 6}[c] if color_type is None else color_type
    prev = np.zeros(w * c, int)
    raw = bytearray()
    for y in range(h):
        row = pixels[y].reshape(-1).astype(int)
        raw.append(filters[y % len(filters)])
        raw += _filter_row(filters[y % len(filters)], row, prev, c).astype(np.uint8).tobytes()
        prev = row
    data = zlib.compress(bytes(raw), 9)
    cuts = np.linspace(0, len(data), idat_parts + 1).astype(int)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, interlace)
    return (
        png_reader.PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"tEXt", b"Comment\x00ancillary chunks are skipped")
        + b"".join(_chunk(b"IDAT", data[a:b]) for a, b in zip(cuts[:-1], cuts[1:]))
        + _chunk(b"IEND", b"")
    )


def panoptic_pixels(rng, h, w, channels=3):
    """Runs of a few random colours plus some noise: all filters meet real edge cases."""
    ids, _, _, _ = random_panoptic_pair(rng, h, w, num_things=4)
    rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)
    noise = rng.random((h, w)) < 0.05
    rgb[noise] = rng.integers(0, 256, (int(noise.sum()), 3), dtype=np.uint8)
    if channels == 4:
        rgb = np.dstack([rgb, rng.integers(0, 256, (h, w), dtype=np.uint8)])
    return rgb


class TestDecoder:
    @pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
    @pytest.mark.parametrize("channels", [3, 4])
    def test_each_filter_type(self, tmp_path, kind, channels):
        rng = np.random.default_rng(kind * 10 + channels)
        pixels = panoptic_pixels(rng, 23, 37, channels)  # odd sizes
        path = str(tmp_path / "a.png")
        with open(path, "wb") as f:
            f.write(encode_png(pixels, [kind]))
        data = open(path, "rb").read()
        assert (png_reader.decode_panoptic_png(data, path) == rgb_to_id(pixels)).all()
        assert (read_panoptic_png(path) == rgb_to_id(pixels)).all()
        assert (np.asarray(Image.open(path)) == pixels).all()  # the encoder is right

    @pytest.mark.parametrize("size", [(1, 1), (1, 9), (7, 1), (5, 3), (31, 65)])
    @pytest.mark.parametrize("channels", [3, 4])
    def test_mixed_filters_odd_sizes_split_idat(self, tmp_path, size, channels):
        rng = np.random.default_rng(size[0] * 100 + size[1])
        pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)  # random: wrap-arounds
        path = str(tmp_path / "a.png")
        with open(path, "wb") as f:
            f.write(encode_png(pixels, [4, 3, 1, 2, 0, 4, 4, 3, 2, 1], idat_parts=3))
        assert (read_panoptic_png(path) == rgb_to_id(pixels)).all()
        if channels == 4:  # the encoder is right (the ids ignore alpha)
            assert (np.asarray(Image.open(path)) == pixels).all()

    def test_pillow_written_images(self, tmp_path):
        rng = np.random.default_rng(0)
        for k, (h, w) in enumerate([(60, 81), (97, 130)]):
            pixels = panoptic_pixels(rng, h, w)
            path = str(tmp_path / f"{k}.png")
            Image.fromarray(pixels).save(path, compress_level=k * 9)
            assert (read_panoptic_png(path) == rgb_to_id(pixels)).all()

    def test_other_formats_fall_back_to_the_general_decoder(self, tmp_path):
        rng = np.random.default_rng(1)
        pixels = panoptic_pixels(rng, 20, 33)
        path = str(tmp_path / "a.png")
        # Palette images: the general decoder expands the palette to RGB.
        palette = Image.fromarray(pixels).quantize(colors=16)
        palette.save(path)
        assert png_reader.decode_panoptic_png(open(path, "rb").read(), path) is None
        assert (read_panoptic_png(path) == rgb_to_id(np.asarray(palette.convert("RGB")))).all()
        # 16-bit and gray images are not panoptic PNGs: a clear error, as before.
        Image.fromarray(pixels[..., 0]).save(path)
        assert png_reader.decode_panoptic_png(open(path, "rb").read(), path) is None
        with pytest.raises(ValueError, match=f"{path}.*8-bit RGB"):
            read_panoptic_png(path)
        Image.fromarray(pixels[..., 0].astype(np.uint16) * 300).save(path)
        with pytest.raises(ValueError, match=f"{path}.*8-bit RGB"):
            read_panoptic_png(path)
        cv2.imwrite(path, pixels.astype(np.uint16) * 257)  # 16-bit RGB
        assert png_reader.parse_png(open(path, "rb").read(), path)[0].bit_depth == 16
        with pytest.raises(ValueError, match=f"{path}.*8-bit RGB"):
            read_panoptic_png(path)

    def test_interlaced_png_uses_the_general_decoder(self, tmp_path):
        rng = np.random.default_rng(2)
        pixels = panoptic_pixels(rng, 13, 11)
        raw = bytearray()
        for sy, sx, dy, dx in ADAM7:
            sub = pixels[sy::dy, sx::dx]
            if sub.size:
                for row in sub:
                    raw += b"\x00" + row.tobytes()
        ihdr = struct.pack(">IIBBBBB", 11, 13, 8, 2, 0, 0, 1)
        png = (
            png_reader.PNG_SIGNATURE
            + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(bytes(raw)))
            + _chunk(b"IEND", b"")
        )
        assert png_reader.parse_png(png, "x")[0] == (11, 13, 8, 2, 1)
        assert png_reader.decode_panoptic_png(png, "x") is None
        path = str(tmp_path / "adam7.png")
        with open(path, "wb") as f:
            f.write(png)
        assert (read_panoptic_png(path) == rgb_to_id(pixels)).all()

    def test_truncated_and_corrupt_files_name_the_file(self, tmp_path):
        rng = np.random.default_rng(3)
        pixels = panoptic_pixels(rng, 16, 24)
        good = encode_png(pixels, [4, 2])
        path = str(tmp_path / "broken.png")

        def check(data, message):
            with open(path, "wb") as f:
                f.write(data)
            with pytest.raises(ValueError, match=f"{path}.*{message}"):
                read_panoptic_png(path)

        idat = good.index(b"IDAT") - 4
        check(good[: idat + 20], "truncated")
        check(good[: good.index(b"IEND") - 4], "truncated: .*no IEND")
        flipped = bytearray(good)
        flipped[idat + 12] ^= 0xFF
        check(bytes(flipped), "CRC mismatch in its IDAT chunk")
        # Valid chunk CRCs around bad image data.
        ihdr_chunk = good[8:33]
        check(
            good[:8] + ihdr_chunk + _chunk(b"IDAT", b"\x78\x9cgarbage") + _chunk(b"IEND", b""),
            "does not inflate",
        )
        short = zlib.compress(b"\x00" * 10)
        check(
            good[:8] + ihdr_chunk + _chunk(b"IDAT", short) + _chunk(b"IEND", b""),
            "inflates to 10 bytes",
        )
        bad_filter = bytearray(16 * (1 + 24 * 3))
        bad_filter[5 * (1 + 24 * 3)] = 7
        check(
            good[:8]
            + ihdr_chunk
            + _chunk(b"IDAT", zlib.compress(bytes(bad_filter)))
            + _chunk(b"IEND", b""),
            "unknown filter type 7 in row 5",
        )
        check(good[:8] + _chunk(b"IDAT", b"") + good[8:], "first chunk is not IHDR")
        with pytest.raises(FileNotFoundError, match="nothing.png"):
            read_panoptic_png(str(tmp_path / "nothing.png"))


def pair_counts_of_maps(gt, pred):
    no_data = np.zeros(0, np.uint8)
    kernels = png_reader.fast_kernels()
    return kernels.pair_counts(no_data, 0, gt, no_data, 0, pred, *gt.shape)


def _numpy_only(monkeypatch):
    """As without numba / deflate installed."""
    monkeypatch.setattr(segment_matching, "fast_kernels", lambda: None)
    monkeypatch.setattr(png_reader, "fast_kernels", lambda: None)
    monkeypatch.setattr(panoptic_files, "fast_kernels", lambda: None)


class TestJointCounts:
    def test_many_pairs_grow_the_table(self):
        rng = np.random.default_rng(4)
        gt = rng.integers(0, 1 << 24, (50, 100)).astype(np.int32)
        pred = rng.integers(0, 1 << 24, (50, 100)).astype(np.int32)
        gt[:10] = pred[:10] = 7  # repeated rows
        gt[20, :50] = pred[20, :50] = 9  # a run
        kernels = png_reader.fast_kernels()
        keys, counts, status, _ = pair_counts_of_maps(gt, pred)
        ref, ref_counts = np.unique(gt.astype(np.int64) * (1 << 24) + pred, return_counts=True)
        order = np.argsort(keys)
        assert status == kernels.OK and (keys[order] == ref).all()
        assert (counts[order] == ref_counts).all()
        assert pair_counts_of_maps(gt, np.full_like(pred, -1))[2] == kernels.ID_OUT_OF_RANGE
        assert pair_counts_of_maps(np.full_like(gt, 1 << 24), pred)[2] == kernels.ID_OUT_OF_RANGE

    def test_pq_image_equals_the_numpy_path(self, monkeypatch):
        rng = np.random.default_rng(5)
        categories = [c["id"] for c in DEFAULT_CATEGORIES]
        cases = [random_panoptic_pair(rng, 40, 57, small_ids=k % 2 == 0) for k in range(6)]
        fast = [
            pq_image(g, gs, p.astype(dtype), ps, categories)
            for (g, gs, p, ps), dtype in zip(cases, [np.int32, np.int64, np.uint32] * 2)
        ]
        _numpy_only(monkeypatch)
        slow = [pq_image(*case[:4], categories) for case in cases]
        for a, b in zip(fast, slow):
            assert (a.tp == b.tp).all() and (a.fp == b.fp).all() and (a.fn == b.fn).all()
            assert np.allclose(a.iou, b.iou, rtol=0, atol=1e-12)

    def test_errors_are_the_same_on_both_paths(self, monkeypatch):
        gt = np.array([[1, 1], [2, 2]], np.int32)
        segments = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 21}]
        for numpy_only in (False, True):
            if numpy_only:
                _numpy_only(monkeypatch)
            with pytest.raises(ValueError, match=r"segment ids \[9\] are in the predicted PNG"):
                pq_image(gt, segments, np.array([[1, 9], [2, 2]]), segments, [1, 21])
            with pytest.raises(ValueError, match="non-negative"):
                pq_image(gt, segments, np.array([[1, -1], [2, 2]]), segments, [1, 21])


class TestPairsOfFiles:
    def test_files_and_maps_give_pq_image(self, tmp_path):
        rng = np.random.default_rng(6)
        categories = [c["id"] for c in DEFAULT_CATEGORIES]
        for k in range(4):
            gt, gs, pred, ps = random_panoptic_pair(rng, 45, 61)
            gt_file, pred_file = str(tmp_path / f"g{k}.png"), str(tmp_path / f"p{k}.png")
            Image.fromarray(id_to_rgb(gt)).save(gt_file)
            rgba = np.dstack([id_to_rgb(pred), np.full(pred.shape, 255, np.uint8)])
            Image.fromarray(rgba if k % 2 else id_to_rgb(pred)).save(pred_file)
            ref = pq_image(gt, gs, pred, ps, categories)
            for p in (pred_file, pred, pred.astype(np.int64)):
                stat = pq_image_of_files(gt_file, gs, p, ps, categories)
                assert (stat.tp == ref.tp).all() and (stat.fp == ref.fp).all()
                assert (stat.fn == ref.fn).all() and np.allclose(stat.iou, ref.iou, atol=1e-12)

    def test_errors_name_the_files(self, tmp_path):
        categories = [c["id"] for c in DEFAULT_CATEGORIES]
        ids = np.ones((6, 5), np.int32)
        segments = [{"id": 1, "category_id": 21}]
        gt_file, pred_file = str(tmp_path / "g.png"), str(tmp_path / "p.png")
        Image.fromarray(id_to_rgb(ids)).save(gt_file)
        raw = bytearray(6 * (1 + 5 * 3))
        raw[2 * 16] = 9
        with open(pred_file, "wb") as f:
            ihdr = struct.pack(">IIBBBBB", 5, 6, 8, 2, 0, 0, 0)
            f.write(
                png_reader.PNG_SIGNATURE
                + _chunk(b"IHDR", ihdr)
                + _chunk(b"IDAT", zlib.compress(bytes(raw)))
                + _chunk(b"IEND", b"")
            )
        with pytest.raises(ValueError, match=f"{pred_file}.*filter type 9 in row 2"):
            pq_image_of_files(gt_file, segments, pred_file, segments, categories)
        with pytest.raises(ValueError, match=r"img: prediction has size \(5, 5\), ground truth"):
            pq_image_of_files(gt_file, segments, ids[1:], segments, categories, image="img")
        with pytest.raises(ValueError, match="non-negative"):
            pq_image_of_files(gt_file, segments, -ids, segments, categories)

    @pytest.mark.parametrize("size", [(1, 1), (3, 8), (6, 9), (4, 17), (9, 64)])
    def test_pair_counts_of_scanlines(self, size):
        """PNG scanlines (RGB / RGBA with varying alpha, every filter, repeated rows) against
        np.unique over the decoded ids, and against an id map as the prediction."""
        rng = np.random.default_rng(size[0] * 1000 + size[1])
        h, w = size
        gt = rng.integers(0, 3, size) * 70001
        pred = rng.integers(0, 2, size) * 5 + 3
        gt[h // 2 :] = gt[h // 2]  # repeated rows: "Up" rows of zeros
        pred[: h // 3] = pred[0]
        gt_rgb = id_to_rgb(gt)
        pred_rgba = np.dstack([id_to_rgb(pred), rng.integers(0, 256, size, dtype=np.uint8)])
        kernels = png_reader.fast_kernels()
        scan = []
        for pixels in (gt_rgb, pred_rgba):
            png = encode_png(pixels, [2, 4, 1, 0, 3, 2, 2])
            header, bpp, data = png_reader.inflate_png(png, "x")
            scan.append((data, bpp))
        ref, ref_counts = np.unique(gt * (1 << 24) + pred, return_counts=True)
        no_map, no_data = np.zeros((1, 1), np.int32), np.zeros(0, np.uint8)
        for p_data, p_bpp, p_map in ((*scan[1], no_map), (no_data, 0, pred.astype(np.int32))):
            keys, counts, status, _ = kernels.pair_counts(
                scan[0][0], scan[0][1], no_map, p_data, p_bpp, p_map, h, w
            )
            order = np.argsort(keys)
            assert status == kernels.OK
            assert (keys[order] == ref).all() and (counts[order] == ref_counts).all()


def test_pq_compute_without_the_fast_kernels(tmp_path, monkeypatch):
    """The general decoder + numpy path (no numba / deflate) gives the same results."""
    rng = np.random.default_rng(7)
    cases = [random_panoptic_pair(rng, 30, 41) for _ in range(4)]
    gt_json, gt_folder, pred_json, pred_folder = write_panoptic_files(str(tmp_path), cases)
    fast = pq_compute(gt_json, pred_json, gt_folder, pred_folder, num_workers=2, engine="pure")
    _numpy_only(monkeypatch)
    png = open(os.path.join(gt_folder, "000000.png"), "rb").read()
    assert png_reader.decode_panoptic_png(png, "x") is None
    slow = pq_compute(gt_json, pred_json, gt_folder, pred_folder, num_workers=1, engine="pure")
    for group in ("All", "Things", "Stuff"):
        assert fast[group] == pytest.approx(slow[group], abs=1e-12)
    for c, values in slow["per_class"].items():
        assert fast["per_class"][c] == pytest.approx(values, abs=1e-12)
    assert fast["All"]["n"] > 0
