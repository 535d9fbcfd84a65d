"""Deferred mask prediction: PanopticFPNExt's outputs stay detectron2's, bit for bit."""

import unittest
import weakref

import torch
from detectron2.modeling import build_model

import panoptic_ext  # noqa: F401  (registers the plugins)
from panoptic_ext.modeling.deferred_masks import MIN_BATCH, DeferredMasks, supports_deferred_masks
from tests.common import get_model_zoo_cfg, random_image_batch
from tests.test_meta_arch import make_detections_confident

# A small R18-FPN with narrow heads: the same code paths as R50, fast.
TINY = [
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 300,
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", 256,
]  # fmt: skip
ALL = ("sem_seg", "instances", "panoptic_seg")


def tiny_models(seed: int = 0):
    """detectron2's PanopticFPN and PanopticFPNExt with the same weights, in eval mode."""
    cfgs = []
    for arch in ("PanopticFPN", "PanopticFPNExt"):
        cfg = get_model_zoo_cfg()
        cfg.merge_from_list(TINY)
        if arch == "PanopticFPNExt":
            cfg.MODEL.META_ARCHITECTURE = arch
            cfg.MODEL.SEM_SEG_HEAD.NAME = "SemanticFPNHead"
        cfgs.append(cfg)
    torch.manual_seed(seed)
    d2 = build_model(cfgs[0])
    make_detections_confident(d2)
    ours = build_model(cfgs[1])
    ours.load_state_dict(d2.state_dict())
    return d2.eval(), ours.eval()


def set_score_threshold(d2, ours, threshold: float) -> None:
    d2.combine_instances_score_thresh = threshold
    ours.postprocessor.instance_score_threshold = threshold


def set_detections(d2, ours, count: int) -> None:
    for model in (d2, ours):
        model.roi_heads.box_predictor.test_topk_per_image = count


class TestOutputsEqualDetectron2(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d2, cls.ours = tiny_models()
        cls.inputs = random_image_batch([(200, 250), (200, 249)], seed=3)
        cls.inputs[1].update(height=150, width=187)
        with torch.no_grad():
            cls.scores = cls.d2.inference(cls.inputs, do_postprocess=False)[0][0].scores

    def tearDown(self):
        set_score_threshold(self.d2, self.ours, 0.5)
        set_detections(self.d2, self.ours, 100)
        self.ours.defer_masks = True

    def assert_same(self, inputs, panoptic_first: bool = True):
        with torch.no_grad():
            theirs = self.d2(inputs)
            ours = self.ours(inputs)
        if panoptic_first:  # the panoptic output before the deferred masks exist
            for o, t in zip(ours, theirs):
                self.assertTrue(torch.equal(o["panoptic_seg"][0], t["panoptic_seg"][0]))
                self.assertEqual(o["panoptic_seg"][1], t["panoptic_seg"][1])
        for o, t in zip(ours, theirs):
            self.assertEqual(list(o), list(t))
            self.assertTrue(torch.equal(o["sem_seg"], t["sem_seg"]))
            fields_o, fields_t = o["instances"].get_fields(), t["instances"].get_fields()
            self.assertEqual(list(fields_o), list(fields_t))
            for name, value in fields_t.items():
                value = value.tensor if hasattr(value, "tensor") else value
                mine = (
                    fields_o[name].tensor if hasattr(fields_o[name], "tensor") else fields_o[name]
                )
                self.assertTrue(torch.equal(mine, value), name)
            self.assertTrue(torch.equal(o["panoptic_seg"][0], t["panoptic_seg"][0]))
            self.assertEqual(o["panoptic_seg"][1], t["panoptic_seg"][1])
        return ours

    def test_thresholds_and_detection_counts(self):
        order = self.scores.sort(descending=True).values
        self.assertEqual(len(order), 100)
        cases = {
            "half needed": (float(order[50]), 100),
            "one needed (padded batch)": (float(order[0]), 100),
            "few needed (padded batch)": (float(order[4]), 100),
            "few not needed (padded rest)": (float(order[96]), 100),
            "none needed": (1.01, 100),
            "all needed": (0.0, 100),
            "fewer detections than a batch": (float(order[4]), 10),
        }
        for threads in (1, torch.get_num_threads()):
            for name, (threshold, count) in cases.items():
                with self.subTest(name, threads=threads):
                    previous = torch.get_num_threads()
                    torch.set_num_threads(threads)
                    try:
                        set_score_threshold(self.d2, self.ours, threshold)
                        set_detections(self.d2, self.ours, count)
                        outputs = self.assert_same(self.inputs)
                    finally:
                        torch.set_num_threads(previous)
                    if name == "half needed":
                        things = sum(s["isthing"] for s in outputs[0]["panoptic_seg"][1])
                        self.assertGreaterEqual(things, 3)  # the fusion placed instances

    def test_outputs_read_in_any_order_and_inference_mode(self):
        set_score_threshold(self.d2, self.ours, float(self.scores.median()))
        self.assert_same(self.inputs, panoptic_first=False)
        with torch.inference_mode():
            theirs = self.d2(self.inputs)
            ours = self.ours(self.inputs)
        # read outside inference mode: the deferred masks are computed in the mode of inference
        self.assertTrue(
            torch.equal(ours[1]["instances"].pred_masks, theirs[1]["instances"].pred_masks)
        )

    def test_zero_detections(self):
        set_score_threshold(self.d2, self.ours, 0.5)
        with torch.no_grad():
            self.ours.roi_heads.box_predictor.test_score_thresh = 1.1  # nothing kept
            self.d2.roi_heads.box_predictor.test_score_thresh = 1.1
            try:
                self.assert_same(self.inputs)
            finally:
                self.ours.roi_heads.box_predictor.test_score_thresh = 0.05
                self.d2.roi_heads.box_predictor.test_score_thresh = 0.05

    def test_disabled(self):
        self.ours.defer_masks = False
        self.assert_same(self.inputs)

    def test_masks_computed_on_demand(self):
        set_score_threshold(self.d2, self.ours, float(self.scores.median()))
        calls = []
        handle = self.ours.roi_heads.mask_pooler.register_forward_hook(
            lambda module, args, out: calls.append(len(out))
        )
        try:
            with torch.no_grad():
                outputs = self.ours(self.inputs)
                outputs[0]["panoptic_seg"]
                first = list(calls)
                outputs[0]["instances"]
                outputs[1]["instances"]
        finally:
            handle.remove()
        total = sum(len(o["instances"]) for o in outputs)
        self.assertEqual(len(first), 1)
        self.assertLess(first[0], total)  # only the confident detections at first
        self.assertEqual(len(calls), 2)  # the others once, for both images
        self.assertEqual(sum(calls), total)


class TestDeferredMasks(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        _, cls.model = tiny_models(seed=1)
        inputs = random_image_batch([(200, 250), (160, 200)], seed=4)
        with torch.no_grad():
            images = cls.model.preprocess_image(inputs)
            cls.features = cls.model.backbone(images.tensor)
            proposals, _ = cls.model.proposal_generator(images, cls.features, None)
            cls.detections = cls.model.roi_heads._forward_box(cls.features, proposals)

    def full_masks(self):
        boxes = [x[torch.arange(len(x))] for x in self.detections]
        with torch.no_grad():
            return [
                x.pred_masks
                for x in self.model.roi_heads.forward_with_given_boxes(self.features, boxes)
            ]

    def test_two_batches_equal_one(self):
        g = torch.Generator().manual_seed(0)
        sizes = [len(x) for x in self.detections]
        self.assertEqual(sizes, [100, 100])
        patterns = {
            "random half": [torch.rand(n, generator=g) < 0.5 for n in sizes],
            "1 needed": [torch.arange(n) < (1 if i == 0 else 0) for i, n in enumerate(sizes)],
            "3 needed": [torch.arange(n) < (3 if i == 0 else 0) for i, n in enumerate(sizes)],
            "all but 2": [torch.arange(n) >= (2 if i == 1 else 0) for i, n in enumerate(sizes)],
            "one image only": [
                torch.ones(sizes[0], dtype=torch.bool),
                torch.zeros(sizes[1], dtype=torch.bool),
            ],
        }
        for threads in (1, torch.get_num_threads()):
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                full = self.full_masks()
                for name, needed in patterns.items():
                    with self.subTest(name, threads=threads), torch.no_grad():
                        deferred = DeferredMasks(
                            self.model.roi_heads, self.features, self.detections, needed
                        )
                        for i, mask in enumerate(needed):
                            partial = deferred.partial(i)
                            self.assertEqual(partial.shape, full[i].shape)
                            self.assertTrue(torch.equal(partial[mask], full[i][mask]))
                        for i in range(len(needed)):
                            self.assertTrue(torch.equal(deferred.complete(i), full[i]))
            finally:
                torch.set_num_threads(previous)

    def test_detections_left_unchanged_and_weights_checked(self):
        needed = [x.scores > x.scores.median() for x in self.detections]
        with torch.no_grad():
            deferred = DeferredMasks(self.model.roi_heads, self.features, self.detections, needed)
        self.assertFalse(any(x.has("pred_masks") for x in self.detections))
        predictor = self.model.roi_heads.mask_head.predictor
        with torch.no_grad():
            predictor.bias.add_(0.0)  # an in-place update, as an optimizer step
        with self.assertRaisesRegex(RuntimeError, "modified after inference"):
            deferred.complete(0)

    def test_features_released_once_complete(self):
        features = {k: v.clone() for k, v in self.features.items()}
        refs = [weakref.ref(v) for v in features.values()]
        needed = [x.scores > x.scores.median() for x in self.detections]
        with torch.no_grad():
            deferred = DeferredMasks(self.model.roi_heads, features, self.detections, needed)
        del features
        self.assertFalse(deferred.is_complete)
        self.assertTrue(any(r() is not None for r in refs))  # held for the missing masks
        with torch.no_grad():
            deferred.complete(0)
        self.assertTrue(deferred.is_complete)
        self.assertTrue(all(r() is None for r in refs))

    def test_training_mode_at_completion(self):
        needed = [x.scores > x.scores.median() for x in self.detections]
        full = self.full_masks()
        with torch.no_grad():
            deferred = DeferredMasks(self.model.roi_heads, self.features, self.detections, needed)
        self.model.train()
        try:
            with torch.no_grad():
                self.assertTrue(torch.equal(deferred.complete(1), full[1]))
            self.assertTrue(self.model.roi_heads.training)
        finally:
            self.model.eval()

    def test_support_and_bad_inputs(self):
        self.assertTrue(supports_deferred_masks(self.model.roi_heads))
        self.assertFalse(supports_deferred_masks(torch.nn.Linear(1, 1)))
        self.assertEqual(MIN_BATCH, 16)
        with self.assertRaises(ValueError):
            DeferredMasks(self.model.roi_heads, self.features, self.detections, [torch.ones(3)])


if __name__ == "__main__":
    unittest.main()
