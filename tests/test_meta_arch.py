"""PanopticFPNExt end to end: detectron2 equivalence, training step, inference, every YAML."""

import glob
import os
import unittest

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from detectron2.utils.visualizer import Visualizer

import panoptic_ext  # noqa: F401  (registers the plugins)
from panoptic_ext.modeling import PanopticFPNExt
from tests.common import (
    CONFIGS,
    R50_1X,
    REPO,
    get_model_zoo_cfg,
    load_cfg,
    make_detections_confident,
    make_fast,
    random_image_batch,
    training_batch,
)


class TestDetectron2Equivalence(unittest.TestCase):
    """With the defaults of panoptic_fpn_R_50_1x.yaml, PanopticFPNExt is detectron2's
    PanopticFPN: same parameters, losses and outputs."""

    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cls.cfg = load_cfg(R50_1X)
        cls.d2_cfg = get_model_zoo_cfg()
        for cfg in (cls.cfg, cls.d2_cfg):
            make_fast(cfg)
            cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 256  # tiny images
        cls.d2 = build_model(cls.d2_cfg)
        cls.ours = build_model(cls.cfg)

    def test_state_dict_keys_and_shapes(self):
        self.assertEqual(type(self.d2).__name__, "PanopticFPN")
        self.assertIsInstance(self.ours, PanopticFPNExt)
        theirs, ours = self.d2.state_dict(), self.ours.state_dict()
        self.assertEqual(list(ours), list(theirs))
        for key, value in theirs.items():
            self.assertEqual(ours[key].shape, value.shape, key)
        self.ours.load_state_dict(theirs, strict=True)

    def test_same_losses_and_outputs(self):
        self.ours.load_state_dict(self.d2.state_dict())
        losses = []
        for model in (self.d2, self.ours):
            model.train()
            torch.manual_seed(1)  # same proposal sampling
            with EventStorage(0):
                losses.append({k: v.item() for k, v in model(training_batch([(96, 128)])).items()})
        self.assertEqual(losses[0], losses[1])
        self.assertEqual(len(losses[1]), 6)

        make_detections_confident(self.d2)
        self.ours.load_state_dict(self.d2.state_dict())
        inputs = random_image_batch([(200, 250), (200, 249)], seed=5)
        inputs[1].update(height=150, width=187)  # a resized output too
        outputs = []
        for model in (self.d2, self.ours):
            model.eval()
            with torch.no_grad():
                outputs.append(model(inputs))
        for theirs, ours in zip(*outputs):
            (pan_t, info_t), (pan_o, info_o) = theirs["panoptic_seg"], ours["panoptic_seg"]
            self.assertTrue(torch.equal(pan_o, pan_t))
            self.assertEqual(info_o, info_t)
            self.assertGreaterEqual(sum(s["isthing"] for s in info_o), 5)  # fusion really ran
            self.assertGreaterEqual(sum(not s["isthing"] for s in info_o), 2)
            self.assertTrue(torch.equal(ours["sem_seg"], theirs["sem_seg"]))
            for field in ("pred_masks", "scores", "pred_classes"):
                self.assertTrue(
                    torch.equal(ours["instances"].get(field), theirs["instances"].get(field))
                )
        self.assertEqual(tuple(outputs[1][1]["panoptic_seg"][0].shape), (150, 187))


class TestPanopticFPNExt(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cfg = load_cfg(R50_1X)
        cls.cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME = "learned"
        make_fast(cls.cfg)
        torch.manual_seed(0)
        cls.model = build_model(cls.cfg)

    def test_training_step(self):
        model = self.model.train()
        with EventStorage(3) as storage:
            losses = model(training_batch([(200, 250), (200, 249)], empty=(1,)))
            total = sum(losses.values())
            total.backward()
            logged = storage.latest()
        self.assertEqual(
            set(losses),
            {
                "loss_sem_seg",
                "loss_rpn_cls",
                "loss_rpn_loc",
                "loss_cls",
                "loss_box_reg",
                "loss_mask",
                "loss_uncertainty",
            },
        )  # fmt: off
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))
        self.assertAlmostEqual(logged["lambda_semantic"][0], 0.5, places=6)
        self.assertAlmostEqual(logged["lambda_instance"][0], 1.0, places=6)
        self.assertIsNotNone(model.loss_weight_schedule.log_variances.grad)
        self.assertIsNotNone(model.sem_seg_head.predictor.weight.grad)
        model.zero_grad()

    def test_inference_and_visualization(self):
        model = self.model.eval()
        inputs = random_image_batch([(200, 250), (200, 249)], seed=2)
        with torch.no_grad():
            outputs = model(inputs)
            raw_instances, raw_sem_seg = model.inference(inputs, do_postprocess=False)
        self.assertEqual(len(outputs), 2)
        self.assertEqual(list(outputs[0]), ["sem_seg", "instances", "panoptic_seg"])
        self.assertEqual(tuple(outputs[1]["sem_seg"].shape), (54, 200, 249))
        self.assertEqual(outputs[1]["instances"].image_size, (200, 249))
        self.assertEqual(len(raw_instances), 2)
        self.assertEqual(tuple(raw_sem_seg.shape), (2, 54, 224, 256))
        panoptic_seg, segments_info = outputs[0]["panoptic_seg"]
        self.assertEqual(panoptic_seg.dtype, torch.int32)
        metadata = MetadataCatalog.get("coco_2017_val_panoptic_separated")
        image = inputs[0]["image"].permute(1, 2, 0).numpy()
        vis = Visualizer(image, metadata).draw_panoptic_seg(panoptic_seg, segments_info)
        self.assertEqual(vis.get_image().shape, (200, 250, 3))

    def test_sem_seg_input_required_in_training(self):
        batch = training_batch([(64, 64)])
        del batch[0]["sem_seg"]
        self.model.train()
        with EventStorage(0), self.assertRaises(ValueError):
            self.model(batch)


def _yaml_files():
    return sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))


class TestConfigs(unittest.TestCase):
    def test_every_yaml_loads_and_builds(self):
        self.assertTrue(_yaml_files())
        for path in _yaml_files():
            with self.subTest(config=os.path.relpath(path, REPO)):
                cfg = load_cfg(path)
                raw = CfgNode.load_yaml_with_base(path, allow_unsafe=True)
                if "META_ARCHITECTURE" not in (raw.get("MODEL") or {}):
                    continue  # a fragment meant to be included by others
                model = build_model(cfg)
                self.assertIsInstance(model, torch.nn.Module)
                del model

    def test_coco_configs_match_detectron2_model_zoo(self):
        """Schedules, input sizes, weights and thresholds as in detectron2's model zoo."""
        intended = {
            "MODEL.META_ARCHITECTURE",
            "MODEL.SEM_SEG_HEAD.NAME",
            "MODEL.ROI_HEADS.NAME",  # PanopticROIHeads: StandardROIHeads + masks on demand
            "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT",  # lambda_s moved to PANOPTIC_EXT.LOSS_WEIGHTS
        }
        for name in ("panoptic_fpn_R_50_1x", "panoptic_fpn_R_50_3x", "panoptic_fpn_R_101_3x"):
            ours = _flatten(
                load_cfg(os.path.join(CONFIGS, "COCO-PanopticSegmentation", f"{name}.yaml"))
            )
            theirs = _flatten(get_model_zoo_cfg(f"COCO-PanopticSegmentation/{name}.yaml"))
            theirs["MODEL.WEIGHTS"] = ours["MODEL.WEIGHTS"] = None  # cleared by the helpers
            differing = {k for k in theirs if ours[k] != theirs[k]}
            self.assertEqual(differing, intended, name)
            self.assertEqual(ours["MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.SEMANTIC"], 0.5)
            self.assertEqual(ours["MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.INSTANCE"], 1.0)


def _flatten(cfg, prefix=""):
    flat = {}
    for key, value in cfg.items():
        if hasattr(value, "items"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


if __name__ == "__main__":
    unittest.main()
