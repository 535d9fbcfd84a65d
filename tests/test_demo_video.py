"""demo/demo.py on videos (eager, --tta, --onnx), truncated or unreadable videos, a missing
camera or display, and the options an export cannot honour."""

import os
import runpy
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from panoptic_ext.apps.train import get_panoptic_cfg
from panoptic_ext.data.synthetic import render_sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(
    ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml"
)
FPS, HEIGHT, WIDTH = 7.0, 72, 88


def _run_demo(argv):
    saved = sys.argv
    sys.argv = ["demo.py"] + [str(a) for a in argv]
    try:
        return runpy.run_path(os.path.join(ROOT, "demo", "demo.py"), run_name="__main__")
    finally:
        sys.argv = saved


def _write_video(path, num_frames, noisy=False):
    """A short video written with OpenCV (FFmpeg's muxer): synthetic scenes, or noise (large
    frames, so that a truncated copy keeps only some of them)."""
    ext = os.path.splitext(path)[1]
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if ext == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, fourcc, FPS, (WIDTH, HEIGHT), True)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(num_frames):
        if noisy:
            frame = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        else:
            frame = np.ascontiguousarray(render_sample(rng, HEIGHT, WIDTH)[0][:, :, ::-1])
        writer.write(frame)
    writer.release()
    return path


def _read_video(path):
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_video")
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(get_panoptic_cfg(QUICK_CONFIG)), str(folder)).save("model")
    return str(folder / "model.pth")


def test_video_is_annotated_at_the_input_rate_and_size(tmp_path, weights):
    video = _write_video(tmp_path / "clip.mp4", 5)
    out = tmp_path / "out"  # a directory, created
    base = ["--config-file", QUICK_CONFIG, "--video-input", video]
    result = _run_demo(base + ["--output", out, "--opts", "MODEL.WEIGHTS", weights])
    assert sorted(os.listdir(out)) == ["clip.mkv"]  # detectron2's demo: <dir>/<name>.mkv
    frames, fps = _read_video(out / "clip.mkv")
    assert len(frames) == 5 and fps == pytest.approx(FPS)
    assert frames[0].shape == (HEIGHT, WIDTH, 3)
    assert result is not None

    # --tta (and a video file as --output) works on video too
    tta_out = tmp_path / "tta.avi"
    opts = ["MODEL.WEIGHTS", weights, "TEST.AUG.MIN_SIZES", "(48, 64)", "TEST.AUG.MAX_SIZE", "128"]
    _run_demo(base + ["--tta", "--output", tta_out, "--opts"] + opts)
    assert len(_read_video(tta_out)[0]) == 5

    # an existing output is not overwritten
    with pytest.raises(SystemExit, match="tta.avi exists"):
        _run_demo(base + ["--output", tta_out, "--opts", "MODEL.WEIGHTS", weights])


def test_truncated_video_ends_clearly_and_keeps_the_frames_done(tmp_path, weights):
    whole = _write_video(tmp_path / "whole.avi", 12, noisy=True)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(data[: len(data) * 6 // 10])
    out = tmp_path / "out.mkv"
    argv = ["--config-file", QUICK_CONFIG, "--video-input", truncated, "--output", out]
    with pytest.raises(SystemExit, match=r"ended after (\d+) of the 12 frames .* truncated") as e:
        _run_demo(argv + ["--opts", "MODEL.WEIGHTS", weights])
    done = int(str(e.value).split("ended after ")[1].split()[0])
    assert 0 < done < 12 and str(out) in str(e.value)
    frames, fps = _read_video(out)  # a playable video of the frames done
    assert len(frames) == done and fps == pytest.approx(FPS)


def test_unreadable_video_missing_camera_and_display(tmp_path, weights, monkeypatch):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    base = ["--config-file", QUICK_CONFIG, "--opts", "MODEL.WEIGHTS", weights]
    with pytest.raises(SystemExit, match="cannot open the video .*junk.mp4"):
        _run_demo(["--video-input", junk, "--output", tmp_path] + base)
    if not cv2.VideoCapture(0).isOpened():
        with pytest.raises(SystemExit, match="--webcam: no camera"):
            _run_demo(["--webcam", "--output", tmp_path / "cam.mkv"] + base)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SystemExit, match="no display.*--output"):
        _run_demo(["--video-input", junk] + base)


def test_onnx_refuses_what_it_cannot_honour(tmp_path):
    video = str(tmp_path / "clip.mp4")
    onnx = ["--onnx", str(tmp_path / "export"), "--video-input", video, "--output", str(tmp_path)]
    for extra, message in (
        (["--tta"], "--tta with --onnx .* needs the eager model"),
        (["--config-file", QUICK_CONFIG], "--config-file .* with --onnx .* config saved beside"),
        (["--opts", "MODEL.DEVICE", "cpu"], "--opts MODEL.DEVICE cpu with --onnx .* export again"),
    ):
        with pytest.raises(SystemExit, match=message):
            _run_demo(onnx + extra)


def test_onnx_export_on_video(tmp_path):
    pytest.importorskip("onnxruntime")
    from panoptic_ext.apps.export.exporter import export_model
    from tests.reliability_common import register_tiny_synthetic, tiny_cfg, unregister

    names = register_tiny_synthetic(str(tmp_path), "demo_video", num_train=1, num_val=1)
    try:
        cfg = tiny_cfg(test=(names["val"],))
        cfg.INPUT.MAX_SIZE_TEST = 128
        torch.manual_seed(0)
        DetectionCheckpointer(build_model(cfg), str(tmp_path)).save("tiny")
        cfg.MODEL.WEIGHTS = str(tmp_path / "tiny.pth")
        export_model(cfg, str(tmp_path / "export"), "onnx")
        video = _write_video(tmp_path / "clip.mp4", 3)
        out = tmp_path / "onnx.mkv"
        argv = ["--onnx", tmp_path / "export", "--video-input", video, "--output", out]
        _run_demo(argv + ["--confidence-threshold", "0.3"])
        frames, fps = _read_video(out)
        assert len(frames) == 3 and frames[0].shape == (HEIGHT, WIDTH, 3)
    finally:
        unregister("demo_video_train", "demo_video_val")
