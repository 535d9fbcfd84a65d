"""The installed environment can run detectron2's own Panoptic FPN on the CPU."""

import os
import re
import subprocess
import sys
import unittest

import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import panoptic_ext
from panoptic_ext.apps.train.collect_env import collect_env_info
from panoptic_ext.compat import detectron2_has_compiled_ops
from tests.common import get_model_zoo_cfg, random_image_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


class TestEnvironment(unittest.TestCase):
    def test_collect_env_names_detectron2_and_versions(self):
        info = collect_env_info()
        for key in (
            "detectron2 ops (_C)",
            "torch",
            "torchvision",
            "numpy",
            "Pillow",
            "fvcore",
            "pycocotools",
            "cityscapesscripts",
            "OpenCV",
        ):
            self.assertIn(key, info)
        self.assertNotIn("not importable", info)

    def test_collect_env_says_which_detectron2(self):
        info = dict(
            re.split(r"\s{2,}", line, maxsplit=1) for line in collect_env_info().splitlines()
        )
        ops = info["detectron2 ops (_C)"]
        self.assertEqual(ops.startswith("compiled"), detectron2_has_compiled_ops())
        self.assertIn("detectron2", info["detectron2 distribution"])

    def test_rotated_nms_runs_or_raises_clear_import_error(self):
        # detectron2's only-compiled ops: real with compiled ops, a clear error with the stand-in
        from detectron2 import _C
        from detectron2.layers import nms_rotated

        if not detectron2_has_compiled_ops():
            with self.assertRaisesRegex(ImportError, "nms_rotated.*without compiled ops"):
                _C.nms_rotated  # noqa: B018
            return
        boxes = torch.tensor([[10.0, 10, 8, 4, 0], [10.0, 10, 8, 4, 1], [40.0, 40, 8, 4, 0]])
        scores = torch.tensor([0.9, 0.8, 0.7])
        self.assertEqual(nms_rotated(boxes, scores, 0.5).tolist(), [0, 2])

    def test_nothing_needs_pkg_resources(self):
        # setuptools >= 81 dropped pkg_resources; detectron2 main's model_zoo still imports it
        done = subprocess.run(
            [sys.executable, "-c", NO_PKG_RESOURCES], cwd=ROOT, capture_output=True, text=True
        )
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])

    def test_package_exports_config(self):
        cfg = get_model_zoo_cfg()
        self.assertIn("PANOPTIC_EXT", cfg.MODEL)
        self.assertTrue(callable(panoptic_ext.add_panoptic_ext_config))


class TestDetectron2PanopticFPN(unittest.TestCase):
    """detectron2's model-zoo Panoptic FPN: one CPU training step and one inference."""

    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cfg = get_model_zoo_cfg()
        cfg.MODEL.META_ARCHITECTURE = "PanopticFPN"
        cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
        cls.model = build_model(cfg)

    def test_training_step(self):
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
        self.model.train()
        with EventStorage():
            losses = self.model(batch)
            total = sum(losses.values())
            total.backward()
        self.assertIn("loss_sem_seg", losses)
        self.assertIn("loss_mask", losses)
        self.assertTrue(torch.isfinite(total))
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.assertTrue(any(g.abs().sum() > 0 for g in grads))

    def test_inference(self):
        self.model.eval()
        with torch.no_grad():
            out = self.model(random_image_batch([(80, 101)]))
        self.assertEqual(out[0]["sem_seg"].shape[1:], (80, 101))
        pan, segments = out[0]["panoptic_seg"]
        self.assertEqual(pan.shape, (80, 101))
