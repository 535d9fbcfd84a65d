"""demo/demo.py on generated images: visualization, segment-id PNG and segments JSON."""

import json
import os
import runpy
import sys

import numpy as np
import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image

from panoptic_ext.apps.train import get_panoptic_cfg
from panoptic_ext.data import rgb_to_id
from panoptic_ext.data.synthetic import render_sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(
    ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml"
)
SYNTHETIC_NAMES = {"disc", "square", "triangle", "things", "sky", "ground", "water"}


def _run_demo(argv):
    saved = sys.argv
    sys.argv = ["demo.py"] + argv
    try:
        return runpy.run_path(os.path.join(ROOT, "demo", "demo.py"), run_name="__main__")
    finally:
        sys.argv = saved


def test_demo_on_generated_images(tmp_path):
    # A model with random weights, saved as a checkpoint (its classes are the synthetic ones:
    # the quick config's DATASETS.TEST is panoptic_synthetic_val, whose metadata names them).
    cfg = get_panoptic_cfg(QUICK_CONFIG)
    weights = str(tmp_path / "model.pth")
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")

    images = tmp_path / "images"
    images.mkdir()
    sizes = {"a": (64, 80), "b": (72, 61)}
    for i, (name, (h, w)) in enumerate(sizes.items()):
        image, _, _ = render_sample(np.random.default_rng(i), h, w)
        Image.fromarray(image).save(images / f"{name}.jpg")
    Image.fromarray(image).save(tmp_path / "c.png")

    output = tmp_path / "out"
    _run_demo(
        ["--config-file", QUICK_CONFIG, "--input", str(images), str(tmp_path / "c.png")]
        + ["--output", str(output), "--opts", "MODEL.WEIGHTS", weights]
    )
    sizes["c"] = sizes["b"]
    expected = {f"{n}{suffix}" for n in sizes for suffix in ("_panoptic.png", "_panoptic_ids.png")}
    expected |= {f"{n}_segments.json" for n in sizes}
    assert set(os.listdir(output)) == expected

    for name, (h, w) in sizes.items():
        vis = Image.open(output / f"{name}_panoptic.png")
        assert vis.size == (w, h) and vis.mode == "RGB"
        ids = rgb_to_id(np.asarray(Image.open(output / f"{name}_panoptic_ids.png")))
        assert ids.shape == (h, w)
        with open(output / f"{name}_segments.json") as f:
            segments = json.load(f)
        assert (segments["height"], segments["width"]) == (h, w)
        info = segments["segments_info"]
        assert {s["id"] for s in info} == set(np.unique(ids).tolist()) - {0}
        for s in info:
            assert s["area"] == int((ids == s["id"]).sum()) > 0
            assert s["category_name"] in SYNTHETIC_NAMES
            assert ("score" in s) == s["isthing"]


def test_demo_skips_a_corrupt_image_and_its_own_outputs(tmp_path):
    """One corrupt image does not stop the batch (exit status 1, the others predicted); with
    --output the input folder, a second run does not predict on the first run's outputs."""
    cfg = get_panoptic_cfg(QUICK_CONFIG)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    images = tmp_path / "images"
    images.mkdir()
    image, _, _ = render_sample(np.random.default_rng(0), 48, 56)
    Image.fromarray(image).save(images / "a.jpg")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    argv = ["--config-file", QUICK_CONFIG, "--input", str(images), "--output", str(images)]
    argv += ["--opts", "MODEL.WEIGHTS", str(tmp_path / "model.pth")]
    for _ in range(2):
        with pytest.raises(SystemExit, match="1 image"):
            _run_demo(argv)
        assert sorted(os.listdir(images)) == [
            "a.jpg",
            "a_panoptic.png",
            "a_panoptic_ids.png",
            "a_segments.json",
            "broken.jpg",
        ]


def test_demo_reports_thin_images_and_predicts_the_others(tmp_path):
    """1x1000 and 10000x10 images cannot be resized for the model: each is named with its size,
    the other images are predicted, and the exit status says what failed."""
    cfg = get_panoptic_cfg(QUICK_CONFIG)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    images = tmp_path / "images"
    images.mkdir()
    image, _, _ = render_sample(np.random.default_rng(0), 48, 56)
    Image.fromarray(image).save(images / "a.png")
    Image.fromarray(np.zeros((1, 1000, 3), np.uint8)).save(images / "wide.png")
    Image.fromarray(np.zeros((10000, 10, 3), np.uint8)).save(images / "tall.png")
    argv = ["--config-file", QUICK_CONFIG, "--input", str(images), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        _run_demo(argv + ["--opts", "MODEL.WEIGHTS", str(tmp_path / "model.pth")])
    message = str(e.value)
    assert "2 image(s) of 3 could not be read or predicted" in message
    assert "wide.png (1x1000 pixels)" in message and "tall.png (10000x10 pixels)" in message
    assert sorted(os.listdir(tmp_path / "o")) == [
        "a_panoptic.png",
        "a_panoptic_ids.png",
        "a_segments.json",
    ]


def test_demo_with_a_python_config(tmp_path):
    """A .py (LazyConfig) config works, with key=value overrides; YAML-style overrides and other
    config files are refused with a message, not a parser traceback."""
    from detectron2.config import instantiate

    from panoptic_ext.apps.train import load_lazy_config

    config = QUICK_CONFIG[: -len(".yaml")] + ".py"
    model = instantiate(load_lazy_config(config).model)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    image, _, _ = render_sample(np.random.default_rng(0), 48, 56)
    Image.fromarray(image).save(tmp_path / "a.png")
    argv = ["--config-file", config, "--input", str(tmp_path / "a.png")]
    argv += ["--output", str(tmp_path / "o")]
    init = f"train.init_checkpoint={tmp_path / 'model.pth'}"
    written = _run_demo(argv + ["--opts", init, "train.device=cpu"])
    with open(tmp_path / "o" / "a_segments.json") as f:
        assert {s["category_name"] for s in json.load(f)["segments_info"]} <= SYNTHETIC_NAMES
    assert written is not None
    with pytest.raises(SystemExit, match="a Python config takes key=value overrides"):
        _run_demo(argv + ["--opts", "MODEL.WEIGHTS", str(tmp_path / "model.pth")])
    with pytest.raises(SystemExit, match="--tta with the Python config"):
        _run_demo(argv + ["--tta", "--opts", init])
    (tmp_path / "cfg.txt").write_text("model: 1\n")
    with pytest.raises(SystemExit, match=r"expected a YAML config \(.yaml, .yml\) or a Python"):
        _run_demo(["--config-file", str(tmp_path / "cfg.txt")] + argv[2:])


def test_predictor_applies_cpu_speedups_only_when_configured():
    from panoptic_ext.apps.predict import PanopticPredictor
    from panoptic_ext.modeling import optimize_for_cpu_inference

    for enabled in (True, False):
        cfg = get_panoptic_cfg(QUICK_CONFIG, ["TEST.CPU_SPEEDUPS", str(enabled)])
        changed = optimize_for_cpu_inference(PanopticPredictor(cfg).model)
        # when the predictor applied them, there is nothing left to change
        assert (sum(changed.values()) == 0) == enabled
