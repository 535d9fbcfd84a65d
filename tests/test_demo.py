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

from panoptic_ext.data import rgb_to_id
from panoptic_ext.data.synthetic import render_sample
from panoptic_ext.apps.train import get_panoptic_cfg

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
