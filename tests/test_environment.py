"""The installed environment runs detectron2's own Panoptic FPN, its ``default_setup`` and its own
scripts on the project's configs, on the CPU; the environment report says which detectron2."""

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import panoptic_ext
from panoptic_ext.apps.train.collect_env import collect_env_info
from panoptic_ext.compat import detectron2_has_compiled_ops
from tests.common import get_model_zoo_cfg, random_image_batch

ROOT = Path(__file__).parents[1]
D2MAIN_TARBALL = Path(
    os.getenv("D2MAIN_TARBALL", ROOT.parent / "shared" / "detectron2-main-02b5c4e.tar.gz")
)
# Imports every module of the package, train_net.py and the tests' model-zoo config with
# pkg_resources made unimportable, as under setuptools >= 81.
NO_PKG_RESOURCES = """
import importlib, pkgutil, sys
sys.modules["pkg_resources"] = None
import panoptic_ext
for module in pkgutil.walk_packages(panoptic_ext.__path__, "panoptic_ext."):
    importlib.import_module(module.name)
import train_net
from tests.common import get_model_zoo_cfg
get_model_zoo_cfg()
"""
# detectron2's own default_setup (environment report, config backup, seeding), as its scripts
# call it, on the project's config.
D2_DEFAULT_SETUP = """
import sys
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
import panoptic_ext
cfg = get_cfg()
panoptic_ext.add_panoptic_ext_config(cfg)
cfg.merge_from_file("configs/Synthetic-PanopticSegmentation/panoptic_fpn_R_18_scratch_cpu.yaml")
cfg.OUTPUT_DIR = sys.argv[1]
default_setup(cfg, default_argument_parser().parse_args([]))
"""


def _env_table():
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in collect_env_info().splitlines())


def test_collect_env_names_detectron2_and_versions():
    info = collect_env_info()
    for key in ("detectron2 ops (_C)", "torch", "torchvision", "numpy", "Pillow", "fvcore"):
        assert key in info
    for key in ("pycocotools", "cityscapesscripts", "OpenCV"):
        assert key in info
    assert "not importable" not in info


def test_collect_env_says_which_detectron2():
    info = _env_table()
    assert info["detectron2 ops (_C)"].startswith("compiled") == detectron2_has_compiled_ops()
    assert "detectron2" in info["detectron2 distribution"]


def test_detectron2s_own_default_setup_runs(tmp_path):
    """detectron2's environment report asks _C for its compiler: the stand-in answers."""
    done = subprocess.run(
        [sys.executable, "-c", D2_DEFAULT_SETUP, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Compiler" in done.stdout + done.stderr
    assert (tmp_path / "config.yaml").is_file()


def test_rotated_nms_runs_or_raises_a_clear_import_error():
    # detectron2's only-compiled ops: real with compiled ops, a clear error with the stand-in
    from detectron2 import _C
    from detectron2.layers import nms_rotated

    if not detectron2_has_compiled_ops():
        with pytest.raises(ImportError, match="nms_rotated.*without compiled ops"):
            _C.nms_rotated  # noqa: B018
        return
    boxes = torch.tensor([[10.0, 10, 8, 4, 0], [10.0, 10, 8, 4, 1], [40.0, 40, 8, 4, 0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms_rotated(boxes, scores, 0.5).tolist() == [0, 2]


def test_nothing_needs_pkg_resources():
    # setuptools >= 81 dropped pkg_resources; detectron2 main's model_zoo still imports it
    done = subprocess.run(
        [sys.executable, "-c", NO_PKG_RESOURCES], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_package_exports_config():
    assert "PANOPTIC_EXT" in get_model_zoo_cfg().MODEL
    assert callable(panoptic_ext.add_panoptic_ext_config)


@pytest.fixture(scope="module")
def d2_tools(tmp_path_factory):
    """detectron2's tools/ folder from its source tarball (what users run from a checkout)."""
    if not D2MAIN_TARBALL.is_file():
        pytest.skip(f"no detectron2 source tarball at {D2MAIN_TARBALL}")
    dest = tmp_path_factory.mktemp("d2src")
    with tarfile.open(D2MAIN_TARBALL) as tar:
        members = [m for m in tar.getmembers() if "/tools/" in m.name and m.name.endswith(".py")]
        tar.extractall(dest, members=members)
    return next(dest.glob("*/tools"))


@pytest.mark.slow
def test_detectron2s_lazyconfig_train_net_trains_and_evaluates_a_python_config(d2_tools, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            str(d2_tools / "lazyconfig_train_net.py"),
            "--config-file",
            str(ROOT / "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.py"),
            f"train.output_dir={out}",
            "train.max_iter=2",
            "train.eval_period=2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "DETECTRON2_DATASETS": str(ROOT / "datasets")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    assert "PQ" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def d2_panoptic_fpn():
    """detectron2's model-zoo Panoptic FPN."""
    torch.manual_seed(0)
    cfg = get_model_zoo_cfg()
    cfg.MODEL.META_ARCHITECTURE = "PanopticFPN"
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    return build_model(cfg)


def test_detectron2_panoptic_fpn_training_step(d2_panoptic_fpn):
    batch = random_image_batch([(96, 128), (96, 127)])
    for d in batch:
        h, w = d["image"].shape[1:]
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 60.0, 50.0]]))
        inst.gt_classes = torch.tensor([3])
        mask = torch.zeros(1, h, w, dtype=torch.bool)
        mask[0, 10:50, 10:60] = True
        inst.gt_masks = BitMasks(mask)
        d["instances"] = inst
        d["sem_seg"] = torch.randint(0, 54, (h, w))
    model = d2_panoptic_fpn.train()
    with EventStorage():
        losses = model(batch)
        total = sum(losses.values())
        total.backward()
    assert {"loss_sem_seg", "loss_mask"} <= set(losses)
    assert torch.isfinite(total)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert any(g.abs().sum() > 0 for g in grads)


def test_detectron2_panoptic_fpn_inference(d2_panoptic_fpn):
    model = d2_panoptic_fpn.eval()
    with torch.no_grad():
        out = model(random_image_batch([(80, 101)]))
    assert out[0]["sem_seg"].shape[1:] == (80, 101)
    assert out[0]["panoptic_seg"][0].shape == (80, 101)
