"""ROIAlign over ROI chunks in threads: the same tensor as detectron2's serial ROIPooler."""

import copy
import multiprocessing
import os
import unittest
from unittest import mock

import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

import panoptic_ext  # noqa: F401  (registers the plugins)
from panoptic_ext.modeling import parallel_pooler
from panoptic_ext.modeling.parallel_pooler import parallelize_roi_poolers


def _pool_in_child(pooler, features, boxes):
    # OpenMP's own thread pool does not survive a fork either (torch then hangs, with or
    # without this project): one intra-op thread; the pooler still uses 2 chunk threads.
    torch.set_num_threads(1)
    with torch.no_grad():
        return pooler(features, boxes)


def random_boxes(n: int, height: int, width: int, seed: int) -> Boxes:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
    wh = torch.rand(n, 2, generator=g) ** 3 * torch.tensor([width, height]) + 1  # many scales
    return Boxes(torch.cat([xy, xy + wh], dim=1))


class TestChunkedROIAlign(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        g = torch.Generator().manual_seed(0)
        # two images, FPN levels p2..p5 of a 256x320 input
        cls.features = [torch.randn(2, 8, 256 // s, 320 // s, generator=g) for s in (4, 8, 16, 32)]
        cls.boxes = [random_boxes(300, 256, 320, seed=1), random_boxes(150, 256, 320, seed=2)]

    def poolers(self, **kwargs):
        serial = ROIPooler(
            output_size=7,
            scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32),
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        )
        parallel = copy.deepcopy(serial)
        parallelize_roi_poolers(parallel, **kwargs)
        return serial, parallel

    def test_same_tensor_any_chunking(self):
        for threads in (2, 3, 7):
            serial, parallel = self.poolers(num_threads=threads)
            with torch.no_grad():
                expected = serial(self.features, self.boxes)
                with mock.patch.object(
                    parallel_pooler, "_pool", wraps=parallel_pooler._pool
                ) as pool:
                    got = parallel(self.features, self.boxes)
                self.assertTrue(pool.called)  # the threads were really used
            self.assertTrue(torch.equal(got, expected), threads)
            with torch.inference_mode():
                self.assertTrue(torch.equal(parallel(self.features, self.boxes), expected))

    @unittest.skipUnless(hasattr(os, "fork"), "needs fork")
    def test_forked_child_gets_its_own_threads(self):
        serial, parallel = self.poolers(num_threads=2)
        with torch.no_grad():
            expected = serial(self.features, self.boxes)
            parallel(self.features, self.boxes)  # the parent's pool now exists
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            # with the parent's thread-less pool, the child would wait forever
            got = pool.apply_async(_pool_in_child, (parallel, self.features, self.boxes))
            self.assertTrue(torch.equal(got.get(timeout=60), expected))

    def test_autograd_and_few_rois_run_serially(self):
        serial, parallel = self.poolers(num_threads=2)
        features = [f.clone().requires_grad_() for f in self.features]
        with mock.patch.object(parallel_pooler, "_pool") as pool:
            out = parallel(features, self.boxes)
            out.sum().backward()
            with torch.no_grad():
                parallel(self.features, [b[:10] for b in self.boxes])
        pool.assert_not_called()
        self.assertTrue(torch.equal(out.detach(), serial(self.features, self.boxes)))
        self.assertIsNotNone(features[0].grad)


if __name__ == "__main__":
    unittest.main()
