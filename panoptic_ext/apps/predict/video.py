"""Panoptic predictions on a video file or a camera, as detectron2's demo does: each frame is
predicted, drawn with detectron2's ``VideoVisualizer`` (colors kept per instance across frames)
and written to a video with OpenCV at the input's frame rate and size, or shown in a window.

A video that ends before the number of frames its header announces (truncated or corrupt) ends
the run with :class:`VideoReadError`; the frames done are in the output, which is closed
properly and plays. The output is written as it goes: Matroska (``.mkv``, the default) and AVI
files stay playable up to the last frame written even if the process is killed.
"""

import contextlib
import logging
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import cv2
import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.utils.video_visualizer import VideoVisualizer
from tqdm import tqdm

__all__ = [
    "VideoReadError",
    "check_display",
    "show_picture",
    "open_video_writer",
    "predict_video",
    "predict_webcam",
    "video_output_path",
]

logger = logging.getLogger(__name__)

WINDOW_NAME = "panoptic_ext"
ESC = 27

# Output extension -> FourCC codes tried in order (the first OpenCV can write is used).
_CODECS = {
    ".mkv": ("x264", "mp4v"),
    ".mp4": ("mp4v",),
    ".avi": ("MJPG", "XVID"),
}


class VideoReadError(RuntimeError):
    """A video or camera could not be opened, or ended early (truncated or corrupt)."""


def check_display() -> None:
    """
    Check that OpenCV can show a window (what the demo does without ``--output``).

    Raises:
        RuntimeError: no display (Linux without ``DISPLAY`` / ``WAYLAND_DISPLAY``) or an OpenCV
            built without a GUI (``opencv-python-headless``); the message suggests ``--output``.
    """
    hint = "give --output to write the results to files instead"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise RuntimeError(f"no display to show the results on (DISPLAY is not set): {hint}")
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
    except cv2.error as e:
        raise RuntimeError(
            f"this OpenCV cannot show windows ({str(e).strip().splitlines()[-1]}; "
            f"opencv-python-headless has no GUI): {hint}"
        ) from None


def show_picture(title: str, picture_bgr: np.ndarray, wait_ms: int = 0) -> bool:
    """Show a picture in the demo's window; False when the user pressed ESC."""
    cv2.setWindowTitle(WINDOW_NAME, title)
    cv2.imshow(WINDOW_NAME, picture_bgr)
    return cv2.waitKey(wait_ms) != ESC


def _writable(path: str, fourcc: str) -> bool:
    """Whether OpenCV can write a video with this codec and extension here (as detectron2's
    demo tests its codec)."""
    with tempfile.TemporaryDirectory(prefix="video_format_test") as folder:
        name = os.path.join(folder, "test" + os.path.splitext(path)[1])
        writer = _writer(name, fourcc, 30.0, (10, 10))
        if not writer.isOpened():
            return False
        writer.write(np.zeros((10, 10, 3), np.uint8))
        writer.release()
        return os.path.isfile(name) and os.path.getsize(name) > 0


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Without OpenCV's log lines (a codec probe that fails prints errors that are not)."""
    level = cv2.getLogLevel() if hasattr(cv2, "getLogLevel") else None
    if level is not None:
        cv2.setLogLevel(0)
    try:
        yield
    finally:
        if level is not None:
            cv2.setLogLevel(level)


def _writer(path: str, fourcc: str, fps: float, size: Tuple[int, int]) -> cv2.VideoWriter:
    code = cv2.VideoWriter_fourcc(*fourcc)
    with _quiet_opencv():
        # FFmpeg's muxers first: their AVI files stay readable when truncated, OpenCV's are not.
        writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, code, fps, size, True)
        if not writer.isOpened():
            writer = cv2.VideoWriter(path, code, fps, size, True)
    return writer


def video_output_path(output: str, source_name: str) -> str:
    """
    detectron2's demo rule: ``--output`` a directory -> ``<dir>/<source stem>.mkv``; else
    ``--output`` is the video file (``.mkv``, ``.mp4`` or ``.avi``). A name without extension
    that does not exist yet is a directory (created when writing).

    Raises:
        ValueError: unsupported extension; FileExistsError: the file exists (not overwritten).
    """
    is_dir = os.path.isdir(output) or output.endswith(("/", os.sep))
    if is_dir or (not os.path.splitext(output)[1] and not os.path.exists(output)):
        path = os.path.join(output, os.path.splitext(os.path.basename(source_name))[0] + ".mkv")
    else:
        path = output
    ext = os.path.splitext(path)[1].lower()
    if ext not in _CODECS:
        raise ValueError(
            f"--output {output}: a video output must end with one of {', '.join(_CODECS)} "
            "(or be a directory)"
        )
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists: remove it or choose another --output")
    return path


def open_video_writer(path: str, fps: float, size: Tuple[int, int]) -> cv2.VideoWriter:
    """
    An OpenCV ``VideoWriter`` of ``path`` (codec by extension: x264 or else mp4v in ``.mkv``,
    mp4v in ``.mp4``, MJPG in ``.avi``) at ``fps`` frames per second, ``size`` = (width,
    height).

    Raises:
        OSError: naming the file, when no codec for its extension can be written here.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    codecs = _CODECS[os.path.splitext(path)[1].lower()]
    for fourcc in codecs:
        if len(codecs) > 1 and not _writable(path, fourcc):
            continue
        writer = _writer(path, fourcc, fps, size)
        if writer.isOpened():
            logger.info("Writing %s (%s, %.2f fps, %dx%d)", path, fourcc, fps, *size)
            return writer
    raise OSError(f"cannot write the video {path}: OpenCV has no working codec of {codecs} here")


def _frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def _annotate(
    predictor: Callable[[np.ndarray], Dict[str, Any]],
    visualizer: VideoVisualizer,
    frame: np.ndarray,
) -> np.ndarray:
    outputs = predictor(frame)
    if "panoptic_seg" not in outputs:
        raise ValueError(
            f"{type(predictor).__name__} returned no 'panoptic_seg' output (outputs: "
            f"{sorted(outputs)}); the demo needs a panoptic model"
        )
    panoptic_seg, segments_info = outputs["panoptic_seg"]
    vis = visualizer.draw_panoptic_seg_predictions(
        frame[:, :, ::-1], panoptic_seg.to("cpu"), segments_info
    )
    return np.ascontiguousarray(vis.get_image()[:, :, ::-1])


def predict_video(
    predictor: Callable[[np.ndarray], Dict[str, Any]],
    metadata: Metadata,
    video_path: str,
    output_path: Optional[str] = None,
    show: Optional[Callable[[str, np.ndarray], bool]] = None,
) -> Dict[str, Any]:
    """
    Annotate every frame of a video file.

    Args:
        predictor (callable): BGR frame -> model outputs with "panoptic_seg".
        metadata (Metadata): class names and colors for detectron2's ``VideoVisualizer``.
        video_path (str): the input video.
        output_path (str): the annotated video to write (same frame rate and size); see
            :func:`video_output_path`. None: frames go to ``show`` only.
        show (callable): ``show(title, frame_bgr)`` after each frame; False stops.

    Returns:
        dict: "frames" (annotated and written), "expected" (frames the header announces, 0 if
        unknown), "fps", "output".

    Raises:
        VideoReadError: the file cannot be opened as a video, or ends before its announced
            number of frames (the frames done are written and the output closed).
    """
    if not os.path.isfile(video_path):
        raise VideoReadError(f"--video-input {video_path}: no such file")
    with _quiet_opencv():  # what cannot be opened is said below
        capture = cv2.VideoCapture(video_path)
    if not capture.isOpened():
        raise VideoReadError(
            f"cannot open the video {video_path}: not a video OpenCV can read, or a damaged file "
            "(an MP4/MOV whose end is missing has lost its index and cannot be read at all)"
        )
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    if not fps > 0 or fps > 1000:
        logger.warning("%s announces no usable frame rate (%s): writing at 30 fps", video_path, fps)
        fps = 30.0
    expected = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    writer = open_video_writer(output_path, fps, (width, height)) if output_path else None
    visualizer = VideoVisualizer(metadata)
    done, stopped = 0, False
    basename = os.path.basename(video_path)
    try:
        with tqdm(total=expected or None, desc=basename, unit="frame", dynamic_ncols=True) as bar:
            for frame in _frames(capture):
                try:
                    vis = _annotate(predictor, visualizer, frame)
                except Exception as e:
                    raise RuntimeError(
                        f"frame {done + 1} of {video_path} could not be predicted: "
                        f"{type(e).__name__}: {e}"
                        + (f"; the {done} frames before it are in {output_path}" if writer else "")
                    ) from e
                if writer is not None:
                    writer.write(vis)
                done += 1
                bar.update(1)
                if show is not None and show(basename, vis) is False:
                    stopped = True
                    break
    finally:
        capture.release()
        if writer is not None:
            writer.release()  # closes the container: the frames done stay playable
    if not stopped and expected and done < expected:
        where = f"; the {done} annotated frames before it are in {output_path}" if writer else ""
        raise VideoReadError(
            f"{video_path} ended after {done} of the {expected} frames its header announces: "
            f"the file is truncated or corrupt (frame {done + 1} cannot be read){where}"
        )
    return {"frames": done, "expected": expected, "fps": fps, "output": output_path}


def predict_webcam(
    predictor: Callable[[np.ndarray], Dict[str, Any]],
    metadata: Metadata,
    output_path: Optional[str] = None,
    show: Optional[Callable[[str, np.ndarray], bool]] = None,
    camera: int = 0,
) -> Dict[str, Any]:
    """
    Annotate the frames of a camera until ESC in the window (``show`` returns False), the end
    of the stream or Ctrl-C; optionally write them to ``output_path`` at the camera's frame
    rate.

    Raises:
        VideoReadError: no camera ``camera`` can be opened.
    """
    with _quiet_opencv():
        capture = cv2.VideoCapture(camera)
    if not capture.isOpened():
        raise VideoReadError(
            f"--webcam: no camera could be opened (OpenCV camera index {camera}); connect one, "
            "check its permissions (e.g. /dev/video*), or use --video-input FILE"
        )
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    fps = fps if 0 < fps <= 1000 else 30.0
    visualizer = VideoVisualizer(metadata)
    writer, done, start = None, 0, time.perf_counter()
    try:
        for frame in _frames(capture):
            vis = _annotate(predictor, visualizer, frame)
            if output_path and writer is None:
                writer = open_video_writer(output_path, fps, (frame.shape[1], frame.shape[0]))
            if writer is not None:
                writer.write(vis)
            done += 1
            if show is not None and show("webcam", vis) is False:
                break
    except KeyboardInterrupt:
        logger.info("Stopped by Ctrl-C")
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    elapsed = time.perf_counter() - start
    logger.info("%d webcam frames in %.1f s", done, elapsed)
    return {"frames": done, "fps": fps, "output": output_path}
