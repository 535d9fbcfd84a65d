"""Panoptic post-processing: exact fast argmax, mask pasting, fusion, registered post-processors."""

import unittest

import torch
from detectron2.layers import paste_masks_in_image
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
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


class TestUpsampledArgmax(unittest.TestCase):
    def check(self, logits, stride, image_size, output_size):
        fast = upsampled_argmax(logits, stride, image_size, output_size)
        ref = upsampled_argmax_reference(logits, stride, image_size, output_size)
        self.assertEqual(fast.dtype, torch.int64)
        self.assertTrue(
            torch.equal(fast, ref),
            f"{(fast != ref).sum()} pixels differ: C={logits.shape[0]} stride={stride} "
            f"image={image_size} output={output_size}",
        )

    def test_smooth_and_noisy_logits_same_size(self):
        for seed, (num_classes, h, w) in enumerate([(54, 56, 64), (7, 50, 63), (133, 40, 48)]):
            for noise in (0.05, 3.0):
                logits = smooth_logits(num_classes, h, w, seed, noise)
                self.check(logits, 4, (4 * h - 3, 4 * w - 5), (4 * h - 3, 4 * w - 5))
                self.check(logits, 4, (4 * h, 4 * w), (4 * h, 4 * w))

    def test_resized_outputs(self):
        logits = smooth_logits(54, 56, 64, seed=3, noise=0.5)
        for output_size in [(150, 187), (333, 401), (224, 13), (7, 256)]:
            self.check(logits, 4, (200, 249), output_size)

    def test_other_strides_and_narrow_images(self):
        self.check(smooth_logits(10, 30, 40, seed=1, noise=1.0), 8, (233, 317), (233, 317))
        self.check(smooth_logits(10, 60, 70, seed=2, noise=1.0), 2, (117, 139), (117, 139))
        self.check(smooth_logits(5, 40, 6, seed=4, noise=1.0), 4, (157, 21), (157, 21))
        self.check(smooth_logits(5, 1, 1, seed=5), 4, (3, 4), (3, 4))

    def test_ties_take_the_first_class(self):
        logits = smooth_logits(12, 40, 48, seed=6, noise=0.5)
        logits[7] = logits[3]  # exact ties everywhere class 3 or 7 would win
        logits[:, :10, :10] = 1.0  # every class tied
        self.check(logits, 4, (160, 192), (160, 192))
        self.check(logits, 4, (160, 192), (101, 77))
        rounded = torch.randn(6, 30, 40, generator=torch.Generator().manual_seed(0)).round()
        self.check(rounded, 4, (120, 160), (120, 160))

    def test_trivial_and_special_inputs(self):
        self.check(torch.randn(1, 10, 12), 4, (40, 48), (40, 48))
        self.check(torch.zeros(5, 10, 12), 4, (40, 48), (40, 48))
        with_nan = torch.randn(4, 10, 12)
        with_nan[1, 3, 3] = float("nan")
        self.check(with_nan, 4, (40, 48), (40, 48))
        self.check(torch.randn(4, 10, 12, dtype=torch.float64), 4, (40, 48), (40, 48))

    def test_bad_shapes(self):
        with self.assertRaises(ValueError):
            upsampled_argmax(torch.randn(10, 12), 4, (40, 48), (40, 48))
        with self.assertRaises(ValueError):
            upsampled_argmax(torch.randn(3, 10, 12), 4, (41, 48), (40, 48))
        with self.assertRaises(ValueError):
            upsampled_argmax(torch.randn(3, 10, 12), 4, (40, 48), (0, 48))

    def test_row_bands_reproduce_the_full_call(self):
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
            self.assertTrue(
                torch.equal(full[:, 1:4, start:stop], band[:, :, start - 4 * lo : stop - 4 * lo])
            )

    def test_upsampled_logits_is_detectron2s_chain(self):
        from detectron2.modeling.postprocessing import sem_seg_postprocess

        logits = torch.randn(5, 14, 16)
        expected = sem_seg_postprocess(
            F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0],
            (50, 61),
            40,
            45,
        )
        self.assertTrue(torch.equal(upsampled_logits(logits, 4, (50, 61), (40, 45)), expected))


class TestCombinePanoptic(unittest.TestCase):
    def combine(self, semantic, scores, masks, classes=None, **overrides):
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
        self.assertTrue(torch.equal(ours[0], theirs[0]))
        self.assertEqual(ours[1], theirs[1])
        return ours

    @staticmethod
    def box_mask(shape, y0, y1, x0, x1):
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[y0:y1, x0:x1] = True
        return mask

    def test_score_order_and_overlap(self):
        semantic = torch.zeros((6, 8), dtype=torch.int64)
        low = self.box_mask((6, 8), 0, 4, 0, 4)  # 16 px, overlaps `high` on 4 px
        high = self.box_mask((6, 8), 2, 6, 2, 6)  # 16 px
        pan, info = self.combine(semantic, [0.6, 0.9], [low, high])
        self.assertEqual([s["instance_id"] for s in info], [1, 0])  # by decreasing score
        self.assertEqual(
            info[0],
            {
                "id": 1,
                "isthing": True,
                "score": info[0]["score"],
                "category_id": 1,
                "instance_id": 1,
            },
        )
        self.assertAlmostEqual(info[0]["score"], 0.9, places=6)
        self.assertEqual(int((pan == 1).sum()), 16)
        self.assertEqual(int((pan == 2).sum()), 12)  # only its uncovered pixels
        self.assertEqual(int(pan[2, 2]), 1)

    def test_overlap_skip(self):
        semantic = torch.zeros((6, 8), dtype=torch.int64)
        first = self.box_mask((6, 8), 0, 4, 0, 4)
        mostly_covered = self.box_mask((6, 8), 1, 4, 0, 4)  # 12 px, all covered
        half_covered = self.box_mask((6, 8), 0, 4, 2, 6)  # 16 px, 8 covered: 0.5 is kept
        pan, info = self.combine(semantic, [0.9, 0.8, 0.7], [first, mostly_covered, half_covered])
        self.assertEqual([s["instance_id"] for s in info], [0, 2])
        self.assertEqual(int((pan == 2).sum()), 8)

    def test_stuff_area_limit_and_score_threshold(self):
        semantic = torch.zeros((4, 6), dtype=torch.int64)
        semantic[:, 3:] = 1  # 12 px of stuff 1
        semantic[0, :2] = 2  # 2 px of stuff 2, below the limit of 4
        semantic[3, :1] = 3  # 1 px under an instance
        thing = self.box_mask((4, 6), 2, 4, 0, 3)  # 6 px
        faint = self.box_mask((4, 6), 0, 1, 0, 6)
        pan, info = self.combine(semantic, [0.8, 0.4], [thing, faint], classes=[5, 6])
        self.assertEqual(
            info[1:], [{"id": 2, "isthing": False, "category_id": 1, "area": 12}]
        )  # stuff 2 too small, stuff 3 hidden, instance 1 below the score threshold
        self.assertEqual(info[0]["category_id"], 5)
        self.assertEqual(int((pan == 0).sum()), 24 - 6 - 12)
        _, info = self.combine(semantic, [0.8], [thing], stuff_area_threshold=2)
        self.assertEqual([s["category_id"] for s in info[1:]], [1, 2])
        _, info = self.combine(semantic, [0.8], [thing], stuff_area_threshold=0)
        self.assertEqual(
            [(s["category_id"], s["area"]) for s in info[1:]], [(1, 12), (2, 2), (3, 0)]
        )
        _, info = self.combine(semantic, [0.8, 0.4], [thing, faint], instance_score_threshold=0.3)
        self.assertEqual(sum(s["isthing"] for s in info), 2)

    def test_empty_mask_no_instances_and_all_void(self):
        semantic = torch.ones((5, 5), dtype=torch.int64)
        empty = torch.zeros((5, 5), dtype=torch.bool)
        pan, info = self.combine(semantic, [0.9], [empty])
        self.assertEqual(info, [{"id": 1, "isthing": False, "category_id": 1, "area": 25}])
        pan, info = self.combine(semantic, [], [])
        self.assertEqual(len(info), 1)
        pan, info = self.combine(torch.zeros((5, 5), dtype=torch.int64), [], [])
        self.assertEqual(info, [])
        self.assertEqual(pan.dtype, torch.int32)
        self.assertFalse(bool(pan.any()))

    def test_random_cases_match_detectron2(self):
        g = torch.Generator().manual_seed(0)
        for _ in range(5):
            semantic = torch.randint(0, 6, (30, 40), generator=g)
            n = int(torch.randint(0, 12, (), generator=g))
            masks = list(torch.rand(n, 30, 40, generator=g) > 0.6)
            scores = torch.rand(n, generator=g).round(decimals=1).tolist()  # with ties
            self.combine(semantic, scores, masks, stuff_area_threshold=20)

    def test_bad_shapes(self):
        with self.assertRaises(ValueError):
            combine_panoptic(
                torch.zeros(2, 3, 4), torch.zeros(0), torch.zeros(0), None, **THRESHOLDS
            )
        with self.assertRaises(ValueError):
            combine_panoptic(torch.zeros(3, 4), torch.zeros(2), torch.zeros(3), None, **THRESHOLDS)

    def test_fold_thing_classes(self):
        labels = torch.tensor([0, 2, 3, 4, 6])
        self.assertEqual(fold_thing_classes(labels, 3).tolist(), [0, 0, 1, 2, 4])


class TestPasteMask(unittest.TestCase):
    def test_matches_paste_masks_in_image(self):
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
        boxes = torch.cat([boxes, random_boxes])
        boxes = Boxes(boxes)
        boxes.clip((50, 60))
        boxes = boxes[boxes.nonempty()].tensor
        probs = torch.rand(len(boxes), 28, 28, generator=g)
        full = paste_masks_in_image(probs, Boxes(boxes), (50, 60), 0.5)
        paster = MaskPaster(probs, boxes, (50, 60), 0.5)
        for i in range(len(boxes)):
            mask, region = paster(i)
            canvas = torch.zeros((50, 60), dtype=torch.bool)
            canvas[region] = torch.from_numpy(mask)
            self.assertTrue(torch.equal(canvas, full[i]), i)
        with self.assertRaises(ValueError):
            MaskPaster(probs[:, None], boxes, (50, 60))


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


class TestPostprocessors(unittest.TestCase):
    def build(self, name, **cfg_changes):
        cfg = get_model_zoo_cfg()
        cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.NAME = name
        cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 300
        for key, value in cfg_changes.items():
            cfg.merge_from_list([key, value])
        return build_panoptic_postprocessor(cfg)

    def run_both(self, logits, instances, output_size, **cfg_changes):
        kwargs = {"stride": 4, "image_size": instances.image_size, "output_size": output_size}
        before = instances.pred_boxes.tensor.clone()
        fast = self.build("fast", **cfg_changes)(logits, instances, **kwargs)
        self.assertTrue(torch.equal(instances.pred_boxes.tensor, before))  # input unchanged
        ref = self.build("detectron2", **cfg_changes)(logits, instances, **kwargs)
        self.assertTrue(torch.equal(fast["panoptic_seg"][0], ref["panoptic_seg"][0]))
        self.assertEqual(fast["panoptic_seg"][1], ref["panoptic_seg"][1])
        return fast, ref

    def test_registry(self):
        self.assertIn("fast", PANOPTIC_POSTPROCESSOR_REGISTRY)
        self.assertIn("detectron2", PANOPTIC_POSTPROCESSOR_REGISTRY)
        with self.assertRaises(ValueError):
            self.build("nonexistent")

    def test_autocast_and_half_masks_equal_detectron2(self):
        logits, instances = synthetic_outputs()
        kwargs = {"stride": 4, "image_size": instances.image_size, "output_size": (200, 249)}
        for dtype in (torch.bfloat16, torch.float16):
            half = Instances(instances.image_size, **instances.get_fields())
            half.pred_masks = instances.pred_masks.to(dtype)
            with torch.autocast("cpu", dtype=dtype):
                fast = self.build("fast")(logits.to(dtype), half, **kwargs)
                ref = self.build("detectron2")(logits.to(dtype), half, **kwargs)
            self.assertTrue(torch.equal(fast["panoptic_seg"][0], ref["panoptic_seg"][0]))
            self.assertEqual(fast["panoptic_seg"][1], ref["panoptic_seg"][1])
            self.assertTrue(torch.equal(fast["instances"].pred_masks, ref["instances"].pred_masks))
            self.assertTrue(torch.equal(fast["sem_seg"], ref["sem_seg"]))

    def test_fast_equals_detectron2(self):
        logits, instances = synthetic_outputs()
        for output_size in [(200, 249), (150, 187)]:
            fast, ref = self.run_both(logits, instances, output_size)
            info = fast["panoptic_seg"][1]
            self.assertGreater(sum(s["isthing"] for s in info), 3)  # the fusion really runs
            self.assertGreater(sum(not s["isthing"] for s in info), 1)
            self.assertEqual(list(fast), ["sem_seg", "instances", "panoptic_seg"])
            self.assertTrue(torch.equal(fast["sem_seg"], ref["sem_seg"]))
            for field in ("pred_masks", "scores", "pred_classes"):
                self.assertTrue(
                    torch.equal(fast["instances"].get(field), ref["instances"].get(field))
                )
            self.assertTrue(
                torch.equal(fast["instances"].pred_boxes.tensor, ref["instances"].pred_boxes.tensor)
            )

    def test_no_instances_and_all_things_mode(self):
        logits, instances = synthetic_outputs(num_dets=0)
        self.run_both(logits, instances, (200, 249))
        logits, instances = synthetic_outputs(num_classes=80 + 53, num_dets=20, seed=1)
        fast, ref = self.run_both(
            logits,
            instances,
            (200, 249),
            **{"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS": "all", "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 133},
        )
        stuff = [s["category_id"] for s in fast["panoptic_seg"][1] if not s["isthing"]]
        self.assertTrue(stuff and all(1 <= c <= 53 for c in stuff))
        self.assertEqual(fast["sem_seg"].shape[0], 133)

    def test_outputs_are_optional_plain_dicts(self):
        logits, instances = synthetic_outputs()
        for sem_seg, inst in [(True, True), (False, False), (False, True)]:
            changes = {
                "MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_SEM_SEG": sem_seg,
                "MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES": inst,
            }
            fast, ref = self.run_both(logits, instances, (200, 249), **changes)
            self.assertIs(type(fast), dict)
            self.assertEqual(list(fast), list(ref))
            self.assertEqual(list(fast)[-1], "panoptic_seg")
            self.assertEqual(len(fast), 1 + sem_seg + inst)

    def test_bad_inputs(self):
        logits, instances = synthetic_outputs(num_dets=3)
        post = self.build("fast")
        with self.assertRaises(ValueError):
            post(logits[0], instances, stride=4, image_size=(200, 249), output_size=(200, 249))
        no_masks = Instances(instances.image_size, **instances.get_fields())
        no_masks.remove("pred_masks")
        with self.assertRaises(ValueError):
            post(logits, no_masks, stride=4, image_size=(200, 249), output_size=(200, 249))
        with self.assertRaises(ValueError):
            self.build("fast", **{"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS": "some"})
        with self.assertRaises(ValueError):  # "all" needs thing + stuff classes in the head
            self.build("fast", **{"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS": "all"})


def _build_postprocessor(name, **postprocess):
    cfg = get_model_zoo_cfg()
    cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.NAME = name
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 300
    for key, value in postprocess.items():
        cfg.MODEL.PANOPTIC_EXT.POSTPROCESS[key] = value
    return build_panoptic_postprocessor(cfg)


def test_every_output_equals_detectron2_when_maps_are_shared():
    """The full-resolution logits, labels and masks computed once for the returned outputs and
    the fusion: every output as detectron2's, also with the unpadded image as output size, with
    non-finite logits and without detections."""
    cases = [((224, 256), None), ((200, 249), None), ((224, 256), "inf"), ((224, 256), "empty")]
    for input_size, special in cases:
        num_dets = 0 if special == "empty" else 40
        logits, instances = synthetic_outputs(num_dets=num_dets, input_size=input_size)
        if special == "inf":
            logits[3, 10, 10] = float("inf")
        kwargs = {"stride": 4, "image_size": input_size, "output_size": input_size}
        fast = _build_postprocessor("fast")(logits, instances, **kwargs)
        ref = _build_postprocessor("detectron2")(logits, instances, **kwargs)
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


if __name__ == "__main__":
    unittest.main()
