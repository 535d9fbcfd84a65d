"""The stem's max pooling without indices: F.max_pool2d's values."""

import copy
import unittest

import torch
from detectron2.modeling.backbone.resnet import BasicStem
from torch.nn import functional as F

from panoptic_ext.modeling.fast_stem import FastPoolStem, max_pool_3x3_s2, use_fast_pool_stem


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
        self.assertEqual(use_fast_pool_stem(fast), 1)
        self.assertEqual(use_fast_pool_stem(fast), 0)
        self.assertIsInstance(fast, FastPoolStem)
        self.assertEqual(list(fast.state_dict()), list(stem.state_dict()))
        x = torch.randn(2, 3, 67, 90)
        with torch.no_grad():
            self.assertTrue(torch.equal(fast(x), stem(x)))
        y = x.clone().requires_grad_()
        fast(y).sum().backward()  # the autograd path: detectron2's pooling
        self.assertIsNotNone(y.grad)


if __name__ == "__main__":
    unittest.main()
