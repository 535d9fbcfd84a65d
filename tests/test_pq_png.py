"""Reading panoptic PNGs (Pillow) for PQ: every PNG filter type, odd sizes, RGBA, palette and
interlaced images, clear errors naming the file on truncated / corrupt / non-RGB files, and PQ of
PNG files equal to PQ of the id maps."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from panoptic_ext.evaluation import pq_image, read_panoptic_png
from panoptic_pq.panoptic_files import pq_image_of_files
from tests.pq_fixtures import DEFAULT_CATEGORIES, random_panoptic_pair

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ids_of(pixels):
    """Reference ids of (H, W, C) uint8 colours: R + 256 G + 256^2 B."""
    p = pixels.astype(np.int64)
    return p[..., 0] + 256 * p[..., 1] + 65536 * p[..., 2]


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
        PNG_SIGNATURE
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


def id_colors(ids):
    ids = np.asarray(ids, np.int64)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("channels", [3, 4])
def test_each_filter_type_decodes_to_ids(tmp_path, kind, channels):
    rng = np.random.default_rng(kind * 10 + channels)
    pixels = panoptic_pixels(rng, 23, 37, channels)  # odd sizes
    path = str(tmp_path / "a.png")
    with open(path, "wb") as f:
        f.write(encode_png(pixels, [kind]))
    ids = read_panoptic_png(path)
    assert ids.dtype == np.int32 and (ids == ids_of(pixels)).all()  # alpha ignored
    assert (np.asarray(Image.open(path)) == pixels).all()  # the encoder is right


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (7, 1), (5, 3), (31, 65)])
@pytest.mark.parametrize("channels", [3, 4])
def test_mixed_filters_odd_sizes_split_idat(tmp_path, size, channels):
    rng = np.random.default_rng(size[0] * 100 + size[1])
    pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)  # random: wrap-arounds
    path = str(tmp_path / "a.png")
    with open(path, "wb") as f:
        f.write(encode_png(pixels, [4, 3, 1, 2, 0, 4, 4, 3, 2, 1], idat_parts=3))
    assert (read_panoptic_png(path) == ids_of(pixels)).all()


def test_pillow_and_opencv_written_images(tmp_path):
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(60, 81), (97, 130)]):
        pixels = panoptic_pixels(rng, h, w)
        path = str(tmp_path / f"{k}.png")
        Image.fromarray(pixels).save(path, compress_level=k * 9)
        assert (read_panoptic_png(path) == ids_of(pixels)).all()
        cv2.imwrite(path, np.ascontiguousarray(pixels[..., ::-1]))  # BGR in OpenCV
        assert (read_panoptic_png(path) == ids_of(pixels)).all()


def test_palette_images_are_read_as_rgb_and_gray_or_16_bit_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    pixels = panoptic_pixels(rng, 20, 33)
    path = str(tmp_path / "a.png")
    palette = Image.fromarray(pixels).quantize(colors=16)
    palette.save(path)
    assert (read_panoptic_png(path) == ids_of(np.asarray(palette.convert("RGB")))).all()
    # 16-bit and gray images are not panoptic PNGs: a clear error naming the file.
    Image.fromarray(pixels[..., 0]).save(path)
    with pytest.raises(ValueError, match=f"{path} must be an 8-bit RGB image, got .* mode L"):
        read_panoptic_png(path)
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 300).save(path)
    with pytest.raises(ValueError, match=f"{path} must be an 8-bit RGB"):
        read_panoptic_png(path)
    cv2.imwrite(path, pixels.astype(np.uint16) * 257)  # 16-bit RGB: Pillow would read 8 bits
    with pytest.raises(ValueError, match=f"{path} must be an 8-bit RGB .*16-bit samples"):
        read_panoptic_png(path)


def test_interlaced_png(tmp_path):
    rng = np.random.default_rng(2)
    pixels = panoptic_pixels(rng, 13, 11)
    raw = bytearray()
    for sy, sx, dy, dx in ADAM7:
        sub = pixels[sy::dy, sx::dx]
        if sub.size:
            for row in sub:
                raw += b"\x00" + row.tobytes()
    ihdr = struct.pack(">IIBBBBB", 11, 13, 8, 2, 0, 0, 1)
    path = str(tmp_path / "adam7.png")
    with open(path, "wb") as f:
        f.write(
            PNG_SIGNATURE
            + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(bytes(raw)))
            + _chunk(b"IEND", b"")
        )
    assert (read_panoptic_png(path) == ids_of(pixels)).all()


def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    rng = np.random.default_rng(3)
    pixels = panoptic_pixels(rng, 16, 24)
    good = encode_png(pixels, [4, 2])
    path = str(tmp_path / "broken.png")

    def check(data, message="cannot be decoded: it is truncated or corrupt"):
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(ValueError, match=f"panoptic PNG {path} {message}"):
            read_panoptic_png(path)

    idat = good.index(b"IDAT") - 4
    check(good[: idat + 20])  # truncated inside the image data
    check(good[:idat])  # no image data at all
    flipped = bytearray(good)
    flipped[idat + 12] ^= 0xFF
    check(bytes(flipped))
    # Valid chunk CRCs around bad image data.
    ihdr_chunk = good[8:33]
    check(good[:8] + ihdr_chunk + _chunk(b"IDAT", b"\x78\x9cgarbage") + _chunk(b"IEND", b""))
    short = zlib.compress(b"\x00" * 10)  # too few bytes for 16 rows
    check(good[:8] + ihdr_chunk + _chunk(b"IDAT", short) + _chunk(b"IEND", b""))
    bad_filter = bytearray(16 * (1 + 24 * 3))
    bad_filter[5 * (1 + 24 * 3)] = 7  # filter types are 0-4
    check(
        good[:8]
        + ihdr_chunk
        + _chunk(b"IDAT", zlib.compress(bytes(bad_filter)))
        + _chunk(b"IEND", b"")
    )
    check(b"not a PNG file")
    check(b"", "is empty")
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        read_panoptic_png(str(tmp_path / "nothing.png"))


def test_pq_of_files_equals_pq_of_id_maps(tmp_path):
    rng = np.random.default_rng(6)
    categories = [c["id"] for c in DEFAULT_CATEGORIES]
    for k in range(4):
        gt, gs, pred, ps = random_panoptic_pair(rng, 45, 61, small_ids=k == 3)
        gt_file, pred_file = str(tmp_path / f"g{k}.png"), str(tmp_path / f"p{k}.png")
        Image.fromarray(id_colors(gt)).save(gt_file)
        rgba = np.dstack([id_colors(pred), np.full(pred.shape, 255, np.uint8)])
        Image.fromarray(rgba if k % 2 else id_colors(pred)).save(pred_file)
        ref = pq_image(gt, gs, pred, ps, categories)
        assert ref.tp.sum() + ref.fp.sum() + ref.fn.sum() > 0
        for p in (pred_file, pred, pred.astype(np.int64), pred.astype(np.uint32)):
            stat = pq_image_of_files(gt_file, gs, p, ps, categories)
            assert (stat.tp == ref.tp).all() and (stat.fp == ref.fp).all()
            assert (stat.fn == ref.fn).all() and np.allclose(stat.iou, ref.iou, atol=1e-12)


def test_pq_of_files_errors_name_the_files(tmp_path):
    categories = [c["id"] for c in DEFAULT_CATEGORIES]
    ids = np.ones((6, 5), np.int32)
    segments = [{"id": 1, "category_id": 21}]
    gt_file, pred_file = str(tmp_path / "g.png"), str(tmp_path / "p.png")
    Image.fromarray(id_colors(ids)).save(gt_file)
    raw = bytearray(6 * (1 + 5 * 3))
    raw[2 * 16] = 9
    with open(pred_file, "wb") as f:
        ihdr = struct.pack(">IIBBBBB", 5, 6, 8, 2, 0, 0, 0)
        f.write(
            PNG_SIGNATURE
            + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(bytes(raw)))
            + _chunk(b"IEND", b"")
        )
    with pytest.raises(ValueError, match=f"{pred_file} cannot be decoded"):
        pq_image_of_files(gt_file, segments, pred_file, segments, categories)
    with pytest.raises(ValueError, match=r"img: prediction has size \(5, 5\), ground truth"):
        pq_image_of_files(gt_file, segments, ids[1:], segments, categories, image="img")
    with pytest.raises(ValueError, match="non-negative"):
        pq_image_of_files(gt_file, segments, -ids, segments, categories)
    with pytest.raises(ValueError, match=r"< 2\*\*24"):
        pq_image_of_files(gt_file, segments, ids << 24, segments, categories)
