"""SemanticFPNHead: the paper's semantic branch, detectron2-compatible, two class layouts."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_sem_seg_head
from torch.nn import functional as F

from panoptic_ext.modeling import SemanticFPNHead
from tests.common import get_model_zoo_cfg

FPN_SHAPES = {f"p{i}": ShapeSpec(channels=32, stride=2**i) for i in range(2, 7)}  # small: fast


def fpn_features(height, width, batch=2, seed=0):
    """FPN features of a batch padded to (height, width), both divisible by 32."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(batch, s.channels, height // s.stride, width // s.stride, generator=g)
        for name, s in FPN_SHAPES.items()
    }


def head_cfg(**changes):
    cfg = get_model_zoo_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SemanticFPNHead"
    for key, value in changes.items():
        cfg.merge_from_list([f"MODEL.SEM_SEG_HEAD.{key}", value])
    return cfg


def test_registered_and_detectron2_compatible():
    assert SEM_SEG_HEADS_REGISTRY.get("SemanticFPNHead") is SemanticFPNHead
    cfg = head_cfg()
    torch.manual_seed(0)
    ours = build_sem_seg_head(cfg, FPN_SHAPES)
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    theirs = build_sem_seg_head(cfg, FPN_SHAPES)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)  # p2.0.weight, ..., predictor.bias
    assert all(ours_sd[k].shape == theirs_sd[k].shape for k in ours_sd)
    ours.load_state_dict(theirs_sd)
    features = fpn_features(64, 96)
    targets = torch.randint(0, 54, (2, 64, 96))
    targets[:, :5] = 255
    for mode in ("train", "eval"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        a, b = ours(features, targets), theirs(features, targets)
        if mode == "train":
            assert torch.equal(a[1]["loss_sem_seg"], b[1]["loss_sem_seg"])
        else:
            assert torch.equal(a[0], b[0])


def test_output_shapes_on_odd_image_sizes():
    # 200x249 and 200x250 images are padded to 224x256 by the backbone (divisibility 32).
    for num_classes in (54, 80 + 53):  # "merged" and "all" class layouts
        head = build_sem_seg_head(head_cfg(NUM_CLASSES=num_classes), FPN_SHAPES).eval()
        features = fpn_features(224, 256)
        logits, losses = head(features)
        assert tuple(logits.shape) == (2, num_classes, 224, 256)
        assert losses == {}
        assert tuple(head.layers(features).shape) == (2, num_classes, 56, 64)


def test_options():
    head = build_sem_seg_head(
        head_cfg(CONVS_DIM=32, NORM="", COMMON_STRIDE=8, IN_FEATURES=["p3", "p5"]), FPN_SHAPES
    ).eval()
    assert head.in_features == ["p3", "p5"]
    assert head.predictor.in_channels == 32
    assert head.p3[0].bias is not None  # no norm: the convs have biases
    assert len(head.p5) == 4  # two (conv, 2x up) steps from stride 32 to 8
    logits, _ = head(fpn_features(224, 256))
    assert tuple(logits.shape) == (2, 54, 224, 256)
    with pytest.raises(ValueError):
        build_sem_seg_head(head_cfg(IN_FEATURES=["p2", "res9"]), FPN_SHAPES)
    with pytest.raises(ValueError):
        build_sem_seg_head(head_cfg(LOSS_ON="sideways"), FPN_SHAPES)


def test_downsampled_loss():
    head = build_sem_seg_head(head_cfg(LOSS_ON="downsampled"), FPN_SHAPES).train()
    features = fpn_features(64, 96)
    targets = torch.randint(0, 54, (2, 64, 96))
    targets[0, :32] = 255
    _, losses = head(features, targets)
    logits = head.layers(features)
    small = targets[:, ::4, ::4]  # nearest: the top-left pixel of each 4x4 cell
    expected = F.cross_entropy(logits, small, ignore_index=255) * head.loss_weight
    assert torch.allclose(losses["loss_sem_seg"], expected)


def test_downsampled_loss_uses_nearest_neighbour_targets():
    head = build_sem_seg_head(head_cfg(LOSS_ON="downsampled"), FPN_SHAPES).train()
    features = fpn_features(64, 96)
    logits = head.layers(features)  # 16 x 24
    for height, width in ((64, 96), (66, 97)):  # the stride divides / does not divide
        targets = torch.randint(0, 54, (2, height, width))
        small = F.interpolate(targets[:, None].float(), size=(16, 24), mode="nearest")
        expected = F.cross_entropy(logits, small[:, 0].long(), ignore_index=255)
        _, losses = head(features, targets)
        assert torch.allclose(losses["loss_sem_seg"], expected * head.loss_weight)


def test_nan_loss_with_labelled_pixels_is_not_hidden():
    head = build_sem_seg_head(head_cfg(), FPN_SHAPES).train()
    features = fpn_features(64, 64)
    features["p2"][0, :, 3, 3] = float("nan")
    _, losses = head(features, torch.randint(0, 54, (2, 64, 64)))
    assert torch.isnan(losses["loss_sem_seg"])  # for the NaN guard to report


def test_all_ignored_targets_give_zero_loss():
    for loss_on in ("upsampled", "downsampled"):
        head = build_sem_seg_head(head_cfg(LOSS_ON=loss_on), FPN_SHAPES).train()
        _, losses = head(fpn_features(64, 64), torch.full((2, 64, 64), 255))
        assert losses["loss_sem_seg"].item() == 0.0
        losses["loss_sem_seg"].backward()  # still connected to the parameters
        assert head.predictor.weight.grad is not None
