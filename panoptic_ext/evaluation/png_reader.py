"""A fast reader of COCO panoptic PNGs: straight from the file's bytes to segment ids.

Panoptic PNGs are 8-bit RGB(A) images made of long runs of a few colours; zlib inflates such
data slowly (overlapping matches one byte at a time), so general decoders (libpng, Pillow,
OpenCV) spend most of their time there. This reader parses the chunks in Python, inflates the
IDAT stream with libdeflate (the ``deflate`` package, ~20x faster than zlib on these images),
and reverses the scanline filters while packing R + 256 G + 256^2 B in one compiled loop
(:mod:`.png_kernels`).

Everything else (grayscale, palette, 16-bit, interlaced PNGs, other formats) is left to the
general decoder (:func:`decode_panoptic_png` returns None). Without ``deflate`` or ``numba``
installed, :func:`fast_kernels` is None and the general decoder is used.
"""

import logging
import struct
import zlib
from types import ModuleType
from typing import NamedTuple, Optional, Tuple

import numpy as np

__all__ = ["PNGHeader", "parse_png", "inflate_png", "decode_panoptic_png", "fast_kernels"]

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BYTES_PER_PIXEL = {2: 3, 6: 4}  # 8-bit RGB, RGBA
_kernels: Optional[ModuleType] = None
_kernels_loaded = False


def fast_kernels() -> Optional[ModuleType]:
    """The compiled kernels module, or None when ``numba`` or ``deflate`` is not installed."""
    global _kernels, _kernels_loaded
    if not _kernels_loaded:
        try:
            import deflate  # noqa: F401  (libdeflate, used by decode_panoptic_png)

            from . import png_kernels

            _kernels = png_kernels
        except ImportError as e:
            logger.warning(
                "Fast PQ evaluation disabled (%s): install panoptic_ext's requirements "
                "(numba, deflate); using the slower general PNG decoder",
                e,
            )
            _kernels = None
        _kernels_loaded = True
    return _kernels


class PNGHeader(NamedTuple):
    """The IHDR fields of a PNG."""

    width: int
    height: int
    bit_depth: int
    color_type: int
    interlace: int


def parse_png(data: bytes, path: str) -> Optional[Tuple[PNGHeader, bytes]]:
    """
    Split a PNG file into its header and its concatenated IDAT data.

    Args:
        data (bytes): the file's contents.
        path (str): the file, for error messages.

    Returns:
        (PNGHeader, bytes) or None when ``data`` is not a PNG (no PNG signature).

    Raises:
        ValueError: the PNG is truncated, a critical chunk's CRC does not match, chunks are out
            of order, or the header is invalid; the message names ``path``.
    """
    if not data.startswith(PNG_SIGNATURE):
        return None
    view = memoryview(data)
    size = len(data)
    pos = len(PNG_SIGNATURE)
    header = None
    idat = []
    while True:
        if pos + 8 > size:
            raise ValueError(
                f"panoptic PNG {path} is truncated: {size} bytes, no IEND chunk"
                + ("" if idat else " and no image data (IDAT)")
            )
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > size:
            raise ValueError(
                f"panoptic PNG {path} is truncated: its {kind.decode('latin-1')!r} chunk at byte "
                f"{pos} needs {end} bytes, the file has {size}"
            )
        if kind in (b"IHDR", b"IDAT"):  # critical chunks: check their CRC as libpng does
            (crc,) = struct.unpack_from(">I", data, end - 4)
            if zlib.crc32(view[pos + 4 : end - 4]) != crc:
                raise ValueError(
                    f"panoptic PNG {path} is corrupt: CRC mismatch in its {kind.decode()} chunk "
                    f"at byte {pos}"
                )
        if kind == b"IHDR":
            if length != 13 or header is not None:
                raise ValueError(f"panoptic PNG {path} is corrupt: invalid IHDR chunk")
            width, height, depth, color, compression, filtering, interlace = struct.unpack_from(
                ">IIBBBBB", data, pos + 8
            )
            if width == 0 or height == 0 or compression != 0 or filtering != 0:
                raise ValueError(
                    f"panoptic PNG {path} is corrupt: invalid header (size {width}x{height}, "
                    f"compression {compression}, filter method {filtering})"
                )
            header = PNGHeader(width, height, depth, color, interlace)
        elif header is None:
            raise ValueError(f"panoptic PNG {path} is corrupt: the first chunk is not IHDR")
        elif kind == b"IDAT":
            idat.append(view[pos + 8 : end - 4])
        elif kind == b"IEND":
            break
        pos = end
    if not idat:
        raise ValueError(f"panoptic PNG {path} is corrupt: no image data (IDAT)")
    return header, b"".join(idat)


def inflate_png(data: bytes, path: str) -> Optional[Tuple[PNGHeader, int, np.ndarray]]:
    """
    The inflated (still filtered) scanlines of an 8-bit RGB / RGBA, non-interlaced PNG file.

    Args:
        data (bytes): the file's contents.
        path (str): the file, for error messages.

    Returns:
        (PNGHeader, bytes per pixel, (height * (1 + width * bpp),) uint8 array), or None when
        this reader does not handle the file (not a PNG, another color type or bit depth,
        interlaced) or the fast kernels are not installed.

    Raises:
        ValueError: the PNG is truncated or corrupt (the message names ``path``).
    """
    if fast_kernels() is None:
        return None
    parsed = parse_png(data, path)
    if parsed is None:
        return None
    header, compressed = parsed
    bpp = _BYTES_PER_PIXEL.get(header.color_type)
    if header.bit_depth != 8 or bpp is None or header.interlace != 0:
        return None
    import deflate

    expected = header.height * (1 + header.width * bpp)
    try:
        raw = deflate.zlib_decompress(compressed, expected)
    except deflate.DeflateError as e:
        raise ValueError(
            f"panoptic PNG {path} is corrupt: its image data does not inflate ({e})"
        ) from None
    if len(raw) != expected:
        raise ValueError(
            f"panoptic PNG {path} is corrupt: its image data inflates to {len(raw)} bytes, "
            f"expected {expected} for {header.width}x{header.height} pixels"
        )
    return header, bpp, np.frombuffer(raw, dtype=np.uint8)


def filter_error(path: str, scanlines: np.ndarray, width: int, bpp: int, row: int) -> ValueError:
    """The error of a scanline whose filter type is unknown."""
    kind = int(scanlines[row * (1 + width * bpp)])
    return ValueError(f"panoptic PNG {path} is corrupt: unknown filter type {kind} in row {row}")


def decode_panoptic_png(data: bytes, path: str) -> Optional[np.ndarray]:
    """
    Segment ids (R + 256 G + 256^2 B) of an 8-bit RGB / RGBA, non-interlaced PNG file.

    Args:
        data (bytes): the file's contents.
        path (str): the file, for error messages.

    Returns:
        ndarray or None: (H, W) int32 ids; None when this reader does not handle the file (see
        :func:`inflate_png`).

    Raises:
        ValueError: the PNG is truncated or corrupt (the message names ``path``).
    """
    inflated = inflate_png(data, path)
    if inflated is None:
        return None
    header, bpp, scanlines = inflated
    ids = np.empty((header.height, header.width), dtype=np.int32)
    bad_row = fast_kernels().unfilter_to_ids(scanlines, header.height, header.width, bpp, ids)
    if bad_row >= 0:
        raise filter_error(path, scanlines, header.width, bpp, bad_row)
    return ids
