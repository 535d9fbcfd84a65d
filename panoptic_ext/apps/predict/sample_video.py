"""A short video of the synthetic scenes, to try ``demo/demo.py --video-input`` without a
camera or a download: a camera pan across a wide synthetic image.

    python -m panoptic_ext.apps.predict.sample_video synthetic_clip.mp4 --frames 48
"""

import argparse
import logging
import os
from typing import List, Optional

import numpy as np

from panoptic_ext.apps.predict.video import open_video_writer
from panoptic_ext.data.synthetic import render_sample

__all__ = ["write_sample_video"]

logger = logging.getLogger(__name__)


def write_sample_video(
    path: str, num_frames: int = 48, size: int = 256, fps: float = 12.0, seed: int = 0
) -> str:
    """
    Write ``num_frames`` frames of ``size`` x ``size`` pixels panning across a synthetic scene
    twice as wide (``.mkv``, ``.mp4`` or ``.avi``, as the demo writes them).

    Returns:
        str: ``path``.
    """
    if num_frames < 1 or size < 16:
        raise ValueError(f"need at least 1 frame of at least 16 pixels, got {num_frames}, {size}")
    scene, _, _ = render_sample(np.random.default_rng(seed), size, 2 * size)
    writer = open_video_writer(path, fps, (size, size))
    try:
        for k in range(num_frames):
            x = round(k * size / max(num_frames - 1, 1))
            writer.write(np.ascontiguousarray(scene[:, x : x + size, ::-1]))
    finally:
        writer.release()
    return path


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(description="write a short video of a synthetic scene")
    parser.add_argument("output", help="video file (.mkv, .mp4 or .avi)")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=256, help="frame width and height")
    parser.add_argument("--fps", type=float, default=12.0)
    args = parser.parse_args(argv)
    if os.path.splitext(args.output)[1].lower() not in (".mkv", ".mp4", ".avi"):
        parser.error(f"{args.output}: expected a .mkv, .mp4 or .avi file name")
    logging.basicConfig(level=logging.INFO)
    return write_sample_video(args.output, args.frames, args.size, args.fps)


if __name__ == "__main__":
    main()
