"""In-place frozen batch norm and ReLU in Conv2d: detectron2's values, bit for bit."""

import copy

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d

import panoptic_ext  # noqa: F401  (registers the plugins)
from panoptic_ext.modeling.inplace_layers import (
    InplaceFrozenBatchNorm2d,
    InplaceReLU,
    use_inplace_conv_layers,
)
from tests.common import resnet18_fpn_backbone


def random_norm(channels: int, seed: int) -> FrozenBatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    norm = FrozenBatchNorm2d(channels)
    norm.weight.copy_(torch.randn(channels, generator=g))
    norm.bias.copy_(torch.randn(channels, generator=g))
    norm.running_mean.copy_(torch.randn(channels, generator=g))
    norm.running_var.copy_(torch.rand(channels, generator=g) + 0.1)
    return norm


@pytest.mark.parametrize(
    "seed, shape", enumerate([(1, 3, 5, 7), (2, 64, 33, 47), (1, 256, 50, 76), (3, 8, 1, 1)])
)
def test_frozen_batch_norm_same_values_in_place(seed, shape):
    norm = random_norm(shape[1], seed=seed)
    inplace = InplaceFrozenBatchNorm2d.from_frozen(norm)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(100 + seed)) * 10
    expected = norm(x)
    y = x.clone()
    with torch.no_grad():
        out = inplace(y)
    assert out.data_ptr() == y.data_ptr()  # no new tensor
    assert torch.equal(out, expected)
    with torch.inference_mode():
        assert torch.equal(inplace(x.clone()), expected)


def test_frozen_batch_norm_autograd_and_other_layouts_use_detectron2s_path():
    norm = random_norm(8, seed=1)
    inplace = InplaceFrozenBatchNorm2d.from_frozen(norm)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    out = inplace(x)
    assert out.data_ptr() != x.data_ptr()
    out.sum().backward()
    assert x.grad is not None
    strided = torch.randn(2, 6, 6, 8).permute(0, 3, 1, 2)  # not contiguous
    before = strided.clone()
    assert torch.equal(inplace(strided), norm(before))
    assert torch.equal(strided, before)  # input untouched


def test_backbone_outputs_and_state_dict_unchanged():
    backbone = resnet18_fpn_backbone()
    for i, m in enumerate(m for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)):
        m.load_state_dict(random_norm(m.num_features, seed=i).state_dict())
    ours = copy.deepcopy(backbone)
    use_inplace_conv_layers(ours)
    assert list(ours.state_dict()) == list(backbone.state_dict())
    ours.load_state_dict(backbone.state_dict(), strict=True)
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        expected, got = backbone(x), ours(x)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_relu_values_and_autograd():
    relu = InplaceReLU()
    x = torch.randn(2, 3, 4, 5)
    x[0, 0, 0, 0] = float("nan")
    expected = torch.relu(x)
    y = x.clone()
    with torch.no_grad():
        out = relu(y)
    assert out.data_ptr() == y.data_ptr()
    assert torch.equal(out.nan_to_num(-1), expected.nan_to_num(-1))
    z = x.clone().requires_grad_()
    out = relu(z)
    out.nan_to_num(0).sum().backward()
    assert torch.equal(z.detach().nan_to_num(-1), x.nan_to_num(-1))  # untouched
