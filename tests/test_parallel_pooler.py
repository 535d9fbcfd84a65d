"""ROIAlign over ROI chunks in threads: the same tensor as detectron2's serial ROIPooler."""

import copy
import multiprocessing
import os
import threading

import pytest
import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torch import nn

import panoptic_ext  # noqa: F401  (registers the plugins)
from panoptic_ext.modeling.parallel_pooler import ChunkedROIAlign, parallelize_roi_poolers


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


class RecordingROIAlign(nn.Module):
    """Runs the wrapped ROIAlign and records, per call, the calling thread and the ROI count."""

    def __init__(self, pooler: nn.Module, calls: list):
        super().__init__()
        self.pooler, self.calls = pooler, calls

    def forward(self, input, rois):
        self.calls.append((threading.get_ident(), rois.shape[0]))
        return self.pooler(input, rois)


@pytest.fixture(scope="module")
def features():
    g = torch.Generator().manual_seed(0)
    # two images, FPN levels p2..p5 of a 256x320 input
    return [torch.randn(2, 8, 256 // s, 320 // s, generator=g) for s in (4, 8, 16, 32)]


@pytest.fixture(scope="module")
def boxes():
    return [random_boxes(300, 256, 320, seed=1), random_boxes(150, 256, 320, seed=2)]


def make_poolers(**kwargs):
    """detectron2's serial pooler and a parallelized copy whose ROIAlign calls are recorded:
    ``(serial, parallel, calls)``, ``calls`` a list per FPN level of (thread id, ROI count)."""
    serial = ROIPooler(
        output_size=7,
        scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32),
        sampling_ratio=0,
        pooler_type="ROIAlignV2",
    )
    parallel = copy.deepcopy(serial)
    assert parallelize_roi_poolers(parallel, **kwargs) == 4
    calls = []
    for level in parallel.level_poolers:
        assert isinstance(level, ChunkedROIAlign)
        calls.append([])
        level.pooler = RecordingROIAlign(level.pooler, calls[-1])
    return serial, parallel, calls


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_same_tensor_any_chunking(features, boxes, threads):
    serial, parallel, calls = make_poolers(num_threads=threads)
    with torch.no_grad():
        expected = serial(features, boxes)
        got = parallel(features, boxes)
    assert torch.equal(got, expected)
    # the threads were really used: some level split into chunks, some pooled off this thread
    assert any(len(level) > 1 for level in calls)
    assert max(len(level) for level in calls) <= threads
    assert any(t != threading.get_ident() for level in calls for t, _ in level)
    with torch.inference_mode():
        assert torch.equal(parallel(features, boxes), expected)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_its_own_threads(features, boxes):
    serial, parallel, _ = make_poolers(num_threads=2)
    with torch.no_grad():
        expected = serial(features, boxes)
        parallel(features, boxes)  # the parent's pool now exists
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        # with the parent's thread-less pool, the child would wait forever
        got = pool.apply_async(_pool_in_child, (parallel, features, boxes))
        assert torch.equal(got.get(timeout=60), expected)


def test_autograd_and_few_rois_run_serially(features, boxes):
    serial, parallel, calls = make_poolers(num_threads=2)
    grad_features = [f.clone().requires_grad_() for f in features]
    out = parallel(grad_features, boxes)
    out.sum().backward()
    with torch.no_grad():
        parallel(features, [b[:10] for b in boxes])
    # serially: each level's ROIAlign called once per forward with all its ROIs, on this thread
    assert [len(level) for level in calls] == [2, 2, 2, 2]
    assert all(t == threading.get_ident() for level in calls for t, _ in level)
    assert sum(level[0][1] for level in calls) == 450
    assert torch.equal(out.detach(), serial(features, boxes))
    assert grad_features[0].grad is not None
