"""Panoptic post-processing: exact fast argmax, mask pasting, fusion, registered post-processors."""

import pytest
import torch
from detectron2.layers import paste_masks_in_image
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, Instances
from torch.nn import functional as F

from panoptic_ext.modeling import (
    PANOPTIC_POSTPROCESSOR_REGISTRY,
    build_panoptic_postprocessor,
    combine_panoptic,
    fold_thing_classes,
    upsampled_argmax,
    upsampled_logits,
)
from panoptic_ext.modeling.mask_paster import MaskPaster
from panoptic_ext.modeling.semantic_argmax import upsampled_argmax_reference
from tests.common import get_model_zoo_cfg

THRESHOLDS = {"overlap_threshold": 0.5, "stuff_area_threshold": 4, "instance_score_threshold": 0.5}


def smooth_logits(num_classes, h, w, seed, noise=0.05, cells=8):
    """Region-like logits: a coarse random field upsampled, plus a little pixel noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, num_classes, max(2, h // cells), max(2, w // cells), generator=g) * 3
    field = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (field + noise * torch.randn(num_classes, h, w, generator=g)).contiguous()


def full_mask(mask):
    """instance_mask() result for a full-image mask."""
    return mask, (slice(0, mask.shape[0]), slice(0, mask.shape[1]))


# upsampled_argmax: bit for bit detectron2's upsample, crop, resize and argmax


def check_argmax(logits, stride, image_size, output_size):
    fast = upsampled_argmax(logits, stride, image_size, output_size)
    ref = upsampled_argmax_reference(logits, stride, image_size, output_size)
    assert fast.dtype == torch.int64
    assert torch.equal(fast, ref), (
        f"{(fast != ref).sum()} pixels differ: C={logits.shape[0]} stride={stride} "
        f"image={image_size} output={output_size}"
    )


@pytest.mark.parametrize("noise", [0.05, 3.0])
@pytest.mark.parametrize("seed, shape", enumerate([(54, 56, 64), (7, 50, 63), (133, 40, 48)]))
def test_argmax_smooth_and_noisy_logits_same_size(seed, shape, noise):
    num_classes, h, w = shape
    logits = smooth_logits(num_classes, h, w, seed, noise)
    check_argmax(logits, 4, (4 * h - 3, 4 * w - 5), (4 * h - 3, 4 * w - 5))
    check_argmax(logits, 4, (4 * h, 4 * w), (4 * h, 4 * w))


@pytest.mark.parametrize("output_size", [(150, 187), (333, 401), (224, 13), (7, 256)])
def test_argmax_resized_outputs(output_size):
    logits = smooth_logits(54, 56, 64, seed=3, noise=0.5)
    check_argmax(logits, 4, (200, 249), output_size)


def test_argmax_other_strides_and_narrow_images():
    check_argmax(smooth_logits(10, 30, 40, seed=1, noise=1.0), 8, (233, 317), (233, 317))
    check_argmax(smooth_logits(10, 60, 70, seed=2, noise=1.0), 2, (117, 139), (117, 139))
    check_argmax(smooth_logits(5, 40, 6, seed=4, noise=1.0), 4, (157, 21), (157, 21))
    check_argmax(smooth_logits(5, 1, 1, seed=5), 4, (3, 4), (3, 4))


def test_argmax_ties_take_the_first_class():
    logits = smooth_logits(12, 40, 48, seed=6, noise=0.5)
    logits[7] = logits[3]  # exact ties everywhere class 3 or 7 would win
    logits[:, :10, :10] = 1.0  # every class tied
    check_argmax(logits, 4, (160, 192), (160, 192))
    check_argmax(logits, 4, (160, 192), (101, 77))
    rounded = torch.randn(6, 30, 40, generator=torch.Generator().manual_seed(0)).round()
    check_argmax(rounded, 4, (120, 160), (120, 160))


def test_argmax_trivial_and_special_inputs():
    check_argmax(torch.randn(1, 10, 12), 4, (40, 48), (40, 48))
    check_argmax(torch.zeros(5, 10, 12), 4, (40, 48), (40, 48))
    with_nan = torch.randn(4, 10, 12)
    with_nan[1, 3, 3] = float("nan")
    check_argmax(with_nan, 4, (40, 48), (40, 48))
    check_argmax(torch.randn(4, 10, 12, dtype=torch.float64), 4, (40, 48), (40, 48))


@pytest.mark.parametrize(
    "shape, image_size, output_size, match",
    [
        ((10, 12), (40, 48), (40, 48), r"Expected \(C, h, w\) logits with C > 0"),
        ((3, 10, 12), (41, 48), (40, 48), r"image_size \(41, 48\) does not fit the padded input"),
        ((3, 10, 12), (40, 48), (0, 48), r"output_size must be positive, got \(0, 48\)"),
    ],
)
def test_argmax_bad_shapes(shape, image_size, output_size, match):
    with pytest.raises(ValueError, match=match):
        upsampled_argmax(torch.randn(*shape), 4, image_size, output_size)


def test_interpolate_row_bands_reproduce_the_full_call():
    # The tie-breaking tier relies on this property of F.interpolate for wide rows: a band
    # of low-res rows [lo, hi) gives the full call's values on the output rows whose first
    # source row is in [lo, hi - 2] (or [lo, h) at the bottom).
    logits = torch.randn(1, 6, 40, 64, generator=torch.Generator().manual_seed(0)) * 10
    full = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
    for lo, hi in [(0, 3), (5, 9), (20, 23), (37, 40)]:
        band = F.interpolate(
            logits[:, 1:4, lo:hi], scale_factor=4, mode="bilinear", align_corners=False
        )
        start = 4 * lo + 2 if lo > 0 else 0
        stop = 4 * (hi - 1) + 2 if hi < 40 else 160
        assert torch.equal(full[:, 1:4, start:stop], band[:, :, start - 4 * lo : stop - 4 * lo])


def test_upsampled_logits_is_detectron2s_chain():
    logits = torch.randn(5, 14, 16)
    expected = sem_seg_postprocess(
        F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0],
        (50, 61),
        40,
        45,
    )
    assert torch.equal(upsampled_logits(logits, 4, (50, 61), (40, 45)), expected)


# combine_panoptic: detectron2's fusion of instances and semantic labels


def combine(semantic, scores, masks, classes=None, **overrides):
    """combine_panoptic on full-image masks, checked equal to detectron2's function."""
    scores = torch.tensor(scores, dtype=torch.float32)
    classes = torch.arange(len(scores)) if classes is None else torch.tensor(classes)
    kwargs = dict(THRESHOLDS, **overrides)
    ours = combine_panoptic(semantic, scores, classes, lambda i: full_mask(masks[i]), **kwargs)
    # The same case through detectron2's function.
    inst = Instances(semantic.shape)
    inst.scores, inst.pred_classes = scores, classes
    inst.pred_masks = torch.stack(masks) if masks else torch.zeros((0,) + semantic.shape)
    theirs = combine_semantic_and_instance_outputs(
        inst,
        semantic,
        kwargs["overlap_threshold"],
        kwargs["stuff_area_threshold"],
        kwargs["instance_score_threshold"],
    )
    assert torch.equal(ours[0], theirs[0])
    assert ours[1] == theirs[1]
    return ours


def box_mask(shape, y0, y1, x0, x1):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_combine_score_order_and_overlap():
    semantic = torch.zeros((6, 8), dtype=torch.int64)
    low = box_mask((6, 8), 0, 4, 0, 4)  # 16 px, overlaps `high` on 4 px
    high = box_mask((6, 8), 2, 6, 2, 6)  # 16 px
    pan, info = combine(semantic, [0.6, 0.9], [low, high])
    assert [s["instance_id"] for s in info] == [1, 0]  # by decreasing score
    assert info[0] == {
        "id": 1,
        "isthing": True,
        "score": info[0]["score"],
        "category_id": 1,
        "instance_id": 1,
    }
    assert info[0]["score"] == pytest.approx(0.9, abs=1e-6)
    assert int((pan == 1).sum()) == 16
    assert int((pan == 2).sum()) == 12  # only its uncovered pixels
    assert int(pan[2, 2]) == 1


def test_combine_overlap_skip():
    semantic = torch.zeros((6, 8), dtype=torch.int64)
    first = box_mask((6, 8), 0, 4, 0, 4)
    mostly_covered = box_mask((6, 8), 1, 4, 0, 4)  # 12 px, all covered
    half_covered = box_mask((6, 8), 0, 4, 2, 6)  # 16 px, 8 covered: 0.5 is kept
    pan, info = combine(semantic, [0.9, 0.8, 0.7], [first, mostly_covered, half_covered])
    assert [s["instance_id"] for s in info] == [0, 2]
    assert int((pan == 2).sum()) == 8


def test_combine_stuff_area_limit_and_score_threshold():
    semantic = torch.zeros((4, 6), dtype=torch.int64)
    semantic[:, 3:] = 1  # 12 px of stuff 1
    semantic[0, :2] = 2  # 2 px of stuff 2, below the limit of 4
    semantic[3, :1] = 3  # 1 px under an instance
    thing = box_mask((4, 6), 2, 4, 0, 3)  # 6 px
    faint = box_mask((4, 6), 0, 1, 0, 6)
    pan, info = combine(semantic, [0.8, 0.4], [thing, faint], classes=[5, 6])
    # stuff 2 too small, stuff 3 hidden, instance 1 below the score threshold
    assert info[1:] == [{"id": 2, "isthing": False, "category_id": 1, "area": 12}]
    assert info[0]["category_id"] == 5
    assert int((pan == 0).sum()) == 24 - 6 - 12
    _, info = combine(semantic, [0.8], [thing], stuff_area_threshold=2)
    assert [s["category_id"] for s in info[1:]] == [1, 2]
    _, info = combine(semantic, [0.8], [thing], stuff_area_threshold=0)
    assert [(s["category_id"], s["area"]) for s in info[1:]] == [(1, 12), (2, 2), (3, 0)]
    _, info = combine(semantic, [0.8, 0.4], [thing, faint], instance_score_threshold=0.3)
    assert sum(s["isthing"] for s in info) == 2


def test_combine_empty_mask_no_instances_and_all_void():
    semantic = torch.ones((5, 5), dtype=torch.int64)
    empty = torch.zeros((5, 5), dtype=torch.bool)
    pan, info = combine(semantic, [0.9], [empty])
    assert info == [{"id": 1, "isthing": False, "category_id": 1, "area": 25}]
    pan, info = combine(semantic, [], [])
    assert len(info) == 1
    pan, info = combine(torch.zeros((5, 5), dtype=torch.int64), [], [])
    assert info == []
    assert pan.dtype == torch.int32
    assert not bool(pan.any())


@pytest.mark.parametrize("seed", range(5))
def test_combine_random_cases_match_detectron2(seed):
    g = torch.Generator().manual_seed(seed)
    semantic = torch.randint(0, 6, (30, 40), generator=g)
    n = int(torch.randint(0, 12, (), generator=g))
    masks = list(torch.rand(n, 30, 40, generator=g) > 0.6)
    scores = torch.rand(n, generator=g).round(decimals=1).tolist()  # with ties
    combine(semantic, scores, masks, stuff_area_threshold=20)


def test_combine_bad_shapes():
    with pytest.raises(ValueError, match=r"semantic must be \(H, W\), got shape \(2, 3, 4\)"):
        combine_panoptic(torch.zeros(2, 3, 4), torch.zeros(0), torch.zeros(0), None, **THRESHOLDS)
    with pytest.raises(ValueError, match=r"scores and classes must be \(N,\) each"):
        combine_panoptic(torch.zeros(3, 4), torch.zeros(2), torch.zeros(3), None, **THRESHOLDS)


def test_fold_thing_classes():
    labels = torch.tensor([0, 2, 3, 4, 6])
    assert fold_thing_classes(labels, 3).tolist() == [0, 0, 1, 2, 4]


def test_mask_paster_matches_paste_masks_in_image():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor(
        [
            [3.2, 4.7, 40.1, 30.0],
            [0.0, 0.0, 60.0, 50.0],
            [55.5, 45.2, 60.0, 50.0],
            [10.0, 10.0, 10.6, 11.2],
            [-5.0, 20.0, 20.0, 70.0],
        ]
    )
    xy = torch.rand(40, 2, generator=g) * torch.tensor([70.0, 60.0]) - 5
    random_boxes = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 40 + 0.1], dim=1)
    boxes = Boxes(torch.cat([boxes, random_boxes]))
    boxes.clip((50, 60))
    boxes = boxes[boxes.nonempty()].tensor
    probs = torch.rand(len(boxes), 28, 28, generator=g)
    full = paste_masks_in_image(probs, Boxes(boxes), (50, 60), 0.5)
    paster = MaskPaster(probs, boxes, (50, 60), 0.5)
    for i in range(len(boxes)):
        mask, region = paster(i)
        canvas = torch.zeros((50, 60), dtype=torch.bool)
        canvas[region] = torch.from_numpy(mask)
        assert torch.equal(canvas, full[i]), i
    with pytest.raises(ValueError, match=r"Expected \(N, M, M\) masks and \(N, 4\) boxes"):
        MaskPaster(probs[:, None], boxes, (50, 60))


# the registered post-processors: "fast" gives detectron2's outputs


def synthetic_outputs(num_classes=54, num_dets=40, input_size=(200, 249), seed=0):
    """Head outputs as the meta-architecture gives them: 1/4 logits of the padded input and raw
    Instances in input coordinates (some boxes partly or fully outside the image)."""
    g = torch.Generator().manual_seed(seed)
    h, w = input_size
    logits = smooth_logits(num_classes, 56, 64, seed, noise=0.5)
    xy = torch.rand(num_dets, 2, generator=g) * torch.tensor([w + 20.0, h + 20.0]) - 10
    wh = torch.rand(num_dets, 2, generator=g) * 80 + 2
    instances = Instances(input_size)
    instances.pred_boxes = Boxes(torch.cat([xy, xy + wh], dim=1).clamp(min=0))
    instances.pred_boxes.clip(input_size)
    instances.scores = torch.rand(num_dets, generator=g)
    instances.pred_classes = torch.randint(0, 80, (num_dets,), generator=g)
    instances.pred_masks = torch.rand(num_dets, 1, 28, 28, generator=g)
    return logits, instances


@pytest.fixture(scope="module")
def build():
    """``build(name, **{config key: value})``: the post-processor of detectron2's model-zoo
    config with STUFF_AREA_LIMIT 300 and those changes (the config is read once)."""
    base = get_model_zoo_cfg()
    base.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 300

    def build(name, **cfg_changes):
        cfg = base.clone()
        cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.NAME = name
        cfg.merge_from_list([item for change in cfg_changes.items() for item in change])
        return build_panoptic_postprocessor(cfg)

    return build


def run_both(build, logits, instances, output_size, **cfg_changes):
    """The "fast" and "detectron2" outputs, checked to leave the input alone and to give the
    same panoptic segmentation."""
    kwargs = {"stride": 4, "image_size": instances.image_size, "output_size": output_size}
    before = instances.pred_boxes.tensor.clone()
    fast = build("fast", **cfg_changes)(logits, instances, **kwargs)
    assert torch.equal(instances.pred_boxes.tensor, before)  # input unchanged
    ref = build("detectron2", **cfg_changes)(logits, instances, **kwargs)
    assert torch.equal(fast["panoptic_seg"][0], ref["panoptic_seg"][0])
    assert fast["panoptic_seg"][1] == ref["panoptic_seg"][1]
    return fast, ref


def test_registry(build):
    assert "fast" in PANOPTIC_POSTPROCESSOR_REGISTRY
    assert "detectron2" in PANOPTIC_POSTPROCESSOR_REGISTRY
    with pytest.raises(
        ValueError,
        match=r"MODEL.PANOPTIC_EXT.POSTPROCESS.NAME='nonexistent' is not a registered panoptic",
    ):
        build("nonexistent")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_half_masks_equal_detectron2(build, dtype):
    logits, instances = synthetic_outputs()
    kwargs = {"stride": 4, "image_size": instances.image_size, "output_size": (200, 249)}
    half = Instances(instances.image_size, **instances.get_fields())
    half.pred_masks = instances.pred_masks.to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        fast = build("fast")(logits.to(dtype), half, **kwargs)
        ref = build("detectron2")(logits.to(dtype), half, **kwargs)
    assert torch.equal(fast["panoptic_seg"][0], ref["panoptic_seg"][0])
    assert fast["panoptic_seg"][1] == ref["panoptic_seg"][1]
    assert torch.equal(fast["instances"].pred_masks, ref["instances"].pred_masks)
    assert torch.equal(fast["sem_seg"], ref["sem_seg"])


@pytest.mark.parametrize("output_size", [(200, 249), (150, 187)])
def test_fast_equals_detectron2(build, output_size):
    logits, instances = synthetic_outputs()
    fast, ref = run_both(build, logits, instances, output_size)
    info = fast["panoptic_seg"][1]
    assert sum(s["isthing"] for s in info) > 3  # the fusion really runs
    assert sum(not s["isthing"] for s in info) > 1
    assert list(fast) == ["sem_seg", "instances", "panoptic_seg"]
    assert torch.equal(fast["sem_seg"], ref["sem_seg"])
    for field in ("pred_masks", "scores", "pred_classes"):
        assert torch.equal(fast["instances"].get(field), ref["instances"].get(field)), field
    assert torch.equal(fast["instances"].pred_boxes.tensor, ref["instances"].pred_boxes.tensor)


def test_no_instances_and_all_things_mode(build):
    logits, instances = synthetic_outputs(num_dets=0)
    run_both(build, logits, instances, (200, 249))
    logits, instances = synthetic_outputs(num_classes=80 + 53, num_dets=20, seed=1)
    fast, ref = run_both(
        build,
        logits,
        instances,
        (200, 249),
        **{"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS": "all", "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 133},
    )
    stuff = [s["category_id"] for s in fast["panoptic_seg"][1] if not s["isthing"]]
    assert stuff and all(1 <= c <= 53 for c in stuff)
    assert fast["sem_seg"].shape[0] == 133


@pytest.mark.parametrize("sem_seg, inst", [(True, True), (False, False), (False, True)])
def test_outputs_are_optional_plain_dicts(build, sem_seg, inst):
    logits, instances = synthetic_outputs()
    changes = {
        "MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_SEM_SEG": sem_seg,
        "MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES": inst,
    }
    fast, ref = run_both(build, logits, instances, (200, 249), **changes)
    assert type(fast) is dict
    assert list(fast) == list(ref)
    assert list(fast)[-1] == "panoptic_seg"
    assert len(fast) == 1 + sem_seg + inst


def test_bad_inputs(build):
    logits, instances = synthetic_outputs(num_dets=3)
    post = build("fast")
    sizes = {"stride": 4, "image_size": (200, 249), "output_size": (200, 249)}
    with pytest.raises(ValueError, match=r"sem_seg_logits must be \(C, h, w\), got shape"):
        post(logits[0], instances, **sizes)
    no_masks = Instances(instances.image_size, **instances.get_fields())
    no_masks.remove("pred_masks")
    with pytest.raises(ValueError, match=r"instances lack the fields \['pred_masks'\]"):
        post(logits, no_masks, **sizes)
    with pytest.raises(ValueError, match=r"SEM_SEG_THINGS must be one of .*got 'some'"):
        build("fast", **{"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS": "some"})
    # "all" needs thing + stuff classes in the head
    with pytest.raises(ValueError, match=r"NUM_CLASSES \(54\) must count the 80 thing classes"):
        build("fast", **{"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS": "all"})


@pytest.mark.parametrize(
    "input_size, special",
    [((224, 256), None), ((200, 249), None), ((224, 256), "inf"), ((224, 256), "empty")],
)
def test_every_output_equals_detectron2_when_maps_are_shared(build, input_size, special):
    """The full-resolution logits, labels and masks computed once for the returned outputs and
    the fusion: every output as detectron2's, also with the unpadded image as output size, with
    non-finite logits and without detections."""
    num_dets = 0 if special == "empty" else 40
    logits, instances = synthetic_outputs(num_dets=num_dets, input_size=input_size)
    if special == "inf":
        logits[3, 10, 10] = float("inf")
    kwargs = {"stride": 4, "image_size": input_size, "output_size": input_size}
    fast = build("fast")(logits, instances, **kwargs)
    ref = build("detectron2")(logits, instances, **kwargs)
    assert list(fast) == list(ref) == ["sem_seg", "instances", "panoptic_seg"]
    torch.testing.assert_close(fast["sem_seg"], ref["sem_seg"], rtol=0, atol=0, equal_nan=True)
    assert fast["sem_seg"].is_contiguous()
    assert torch.equal(fast["panoptic_seg"][0], ref["panoptic_seg"][0])
    assert fast["panoptic_seg"][1] == ref["panoptic_seg"][1]
    ours, theirs = fast["instances"], ref["instances"]
    assert list(ours.get_fields()) == list(theirs.get_fields())
    assert ours.image_size == theirs.image_size
    assert ours.pred_masks.dtype == theirs.pred_masks.dtype
    assert torch.equal(ours.pred_masks, theirs.pred_masks)
    assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
    if special is None:
        assert sum(s["isthing"] for s in fast["panoptic_seg"][1]) > 3
