"""The backbone's faster exact steps: stem max pooling, in-place FPN top-down sums."""

import copy
import unittest

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
from detectron2.modeling.backbone.resnet import BasicStem
from torch.nn import functional as F

from panoptic_ext.modeling.fast_backbone import (
    FastPoolStem,
    InplaceTopDownFPN,
    max_pool_3x3_s2,
    use_fast_backbone,
)
from tests.common import get_model_zoo_cfg


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


class TestMaxPool(unittest.TestCase):
    def test_every_small_size_with_nans_and_ties(self):
        g = torch.Generator().manual_seed(0)
        for h in range(2, 12):
            for w in range(2, 12):
                x = torch.randn(2, 3, h, w, generator=g).round()  # many ties
                x[0, 0, h // 2, w // 2] = float("nan")
                x[1, 2, 0, w - 1] = float("-inf")
                with self.subTest(h=h, w=w):
                    self.assertTrue(same(max_pool_3x3_s2(x), F.max_pool2d(x, 3, 2, 1)))

    def test_large_and_non_contiguous(self):
        x = torch.randn(1, 8, 101, 150).permute(0, 1, 3, 2)
        self.assertTrue(same(max_pool_3x3_s2(x), F.max_pool2d(x, 3, 2, 1)))
        with self.assertRaises(ValueError):
            max_pool_3x3_s2(torch.zeros(3, 4, 4))


class TestFastPoolStem(unittest.TestCase):
    def test_stem_outputs_and_state_dict(self):
        torch.manual_seed(0)
        stem = BasicStem(3, 16, norm="FrozenBN")
        fast = copy.deepcopy(stem)
        use_fast_backbone(fast)
        self.assertIsInstance(fast, FastPoolStem)
        self.assertEqual(list(fast.state_dict()), list(stem.state_dict()))
        x = torch.randn(2, 3, 67, 90)
        with torch.no_grad():
            self.assertTrue(torch.equal(fast(x), stem(x)))
        y = x.clone().requires_grad_()
        fast(y).sum().backward()  # the autograd path: detectron2's pooling
        self.assertIsNotNone(y.grad)


class TestInplaceTopDownFPN(unittest.TestCase):
    def test_backbone_outputs_equal_detectron2s(self):
        cfg = get_model_zoo_cfg()
        cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64])
        torch.manual_seed(0)
        backbone = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
        for p in backbone.parameters():  # non-trivial top-down sums
            torch.nn.init.normal_(p, std=0.05)
        fast = copy.deepcopy(backbone)
        use_fast_backbone(fast)
        self.assertIsInstance(fast, InplaceTopDownFPN)
        self.assertEqual(list(fast.state_dict()), list(backbone.state_dict()))
        for size in ((128, 160), (96, 224)):
            x = torch.randn(1, 3, *size)
            with torch.no_grad():
                expected, got = backbone(x), fast(x)
            self.assertEqual(list(got), list(expected))
            for name in expected:
                self.assertTrue(torch.equal(got[name], expected[name]), (size, name))
        # with autograd: detectron2's forward
        out = fast(torch.randn(1, 3, 64, 64))
        out["p2"].sum().backward()
        self.assertIsNotNone(fast.lateral_convs[-1].weight.grad)


if __name__ == "__main__":
    unittest.main()
