"""The backbone's faster exact steps: stem max pooling, in-place FPN top-down sums."""

import copy

import pytest
import torch
from detectron2.modeling.backbone.resnet import BasicStem
from torch.nn import functional as F

from panoptic_ext.modeling.fast_backbone import (
    FastPoolStem,
    InplaceTopDownFPN,
    max_pool_3x3_s2,
    use_fast_backbone,
)
from tests.common import resnet18_fpn_backbone


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


@pytest.mark.parametrize("w", range(2, 12))
@pytest.mark.parametrize("h", range(2, 12))
def test_max_pool_every_small_size_with_nans_and_ties(h, w):
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(2, 3, h, w, generator=g).round()  # many ties
    x[0, 0, h // 2, w // 2] = float("nan")
    x[1, 2, 0, w - 1] = float("-inf")
    assert same(max_pool_3x3_s2(x), F.max_pool2d(x, 3, 2, 1))


def test_max_pool_large_and_non_contiguous():
    x = torch.randn(1, 8, 101, 150).permute(0, 1, 3, 2)
    assert same(max_pool_3x3_s2(x), F.max_pool2d(x, 3, 2, 1))
    with pytest.raises(
        ValueError, match=r"Expected a \(N, C, H, W\) tensor, got shape \(3, 4, 4\)"
    ):
        max_pool_3x3_s2(torch.zeros(3, 4, 4))


def test_fast_pool_stem_outputs_and_state_dict():
    torch.manual_seed(0)
    stem = BasicStem(3, 16, norm="FrozenBN")
    fast = copy.deepcopy(stem)
    use_fast_backbone(fast)
    assert isinstance(fast, FastPoolStem)
    assert list(fast.state_dict()) == list(stem.state_dict())
    x = torch.randn(2, 3, 67, 90)
    with torch.no_grad():
        assert torch.equal(fast(x), stem(x))
    y = x.clone().requires_grad_()
    fast(y).sum().backward()  # the autograd path: detectron2's pooling
    assert y.grad is not None


@pytest.fixture(scope="module")
def backbone():
    """An R18 FPN with non-trivial top-down sums (do not modify: shared by the module)."""
    backbone = resnet18_fpn_backbone()
    for p in backbone.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return backbone


@pytest.fixture(scope="module")
def fast_backbone(backbone):
    fast = copy.deepcopy(backbone)
    use_fast_backbone(fast)
    return fast


def test_inplace_top_down_fpn_class_and_state_dict(backbone, fast_backbone):
    assert isinstance(fast_backbone, InplaceTopDownFPN)
    assert list(fast_backbone.state_dict()) == list(backbone.state_dict())


@pytest.mark.parametrize("size", [(128, 160), (96, 224)])
def test_inplace_top_down_fpn_outputs_equal_detectron2s(backbone, fast_backbone, size):
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected, got = backbone(x), fast_backbone(x)
    assert list(got) == list(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_inplace_top_down_fpn_autograd_runs_detectron2s_forward(fast_backbone):
    fast = copy.deepcopy(fast_backbone)  # gradients stay off the shared module
    out = fast(torch.randn(1, 3, 64, 64))
    out["p2"].sum().backward()
    assert fast.lateral_convs[-1].weight.grad is not None
