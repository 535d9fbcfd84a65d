"""Loss-weight schedules: values at chosen iterations, YAML selection, learned weights."""

import math
import tempfile
import unittest
from types import SimpleNamespace

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.events import EventStorage

from panoptic_ext.modeling import (
    LOSS_WEIGHT_SCHEDULE_REGISTRY,
    LossWeightSchedule,
    PanopticFPNExt,
    build_loss_weight_schedule,
)
from tests.common import get_model_zoo_cfg


def build(name, **keys):
    cfg = get_model_zoo_cfg()
    cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME = name
    for key, value in keys.items():
        cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS[key] = value
    cfg.SOLVER.MAX_ITER = 1000
    return build_loss_weight_schedule(cfg)


class TestSchedules(unittest.TestCase):
    def assertWeights(self, schedule, iteration, instance, semantic):
        weights = schedule(iteration)
        self.assertAlmostEqual(
            float(torch.as_tensor(weights.instance).detach()), instance, places=6
        )
        self.assertAlmostEqual(
            float(torch.as_tensor(weights.semantic).detach()), semantic, places=6
        )

    def test_registry(self):
        names = {name for name, _ in LOSS_WEIGHT_SCHEDULE_REGISTRY}
        self.assertEqual(
            names, {"constant", "linear_warmup", "step", "cosine", "learned", "alternating"}
        )
        with self.assertRaises(ValueError):
            build("exponential")

    def test_constant_default(self):
        schedule = build_loss_weight_schedule(get_model_zoo_cfg())
        self.assertIsInstance(schedule, LossWeightSchedule)
        for it in (0, 12345):
            self.assertWeights(schedule, it, 1.0, 0.5)
        self.assertEqual(list(schedule.parameters()), [])
        self.assertEqual(schedule.state_dict(), {})
        self.assertEqual(schedule.extra_losses(), {})

    def test_linear_warmup(self):
        schedule = build(
            "linear_warmup", START_INSTANCE=0.5, START_SEMANTIC=0.0, SEMANTIC=0.8, WARMUP_ITERS=100
        )
        self.assertWeights(schedule, 0, 0.5, 0.0)
        self.assertWeights(schedule, 25, 0.625, 0.2)
        self.assertWeights(schedule, 100, 1.0, 0.8)
        self.assertWeights(schedule, 5000, 1.0, 0.8)
        self.assertWeights(build("linear_warmup", WARMUP_ITERS=0), 0, 1.0, 0.5)

    def test_alternating(self):
        # one loss per minibatch: instance on even iterations, semantic on odd ones
        schedule = build("alternating", INSTANCE=0.8, SEMANTIC=0.3)
        for it in (0, 2, 1000):
            self.assertWeights(schedule, it, 0.8, 0.0)
        for it in (1, 3, 1001):
            self.assertWeights(schedule, it, 0.0, 0.3)

    def test_step(self):
        schedule = build("step", STEPS=[10, 20], FACTORS=[[1.0, 0.5], [0.1, 2.0]])
        self.assertWeights(schedule, 9, 1.0, 0.5)
        self.assertWeights(schedule, 10, 1.0, 0.25)
        self.assertWeights(schedule, 19, 1.0, 0.25)
        self.assertWeights(schedule, 20, 0.1, 0.5)
        with self.assertRaises(ValueError):
            build("step", STEPS=[10, 20], FACTORS=[[1.0, 0.5]])
        with self.assertRaises(ValueError):
            build("step", STEPS=[20, 10], FACTORS=[[1.0, 0.5], [1.0, 0.5]])

    def test_cosine(self):
        schedule = build("cosine", START_SEMANTIC=1.0, SEMANTIC=0.0, MAX_ITER=200)
        self.assertWeights(schedule, 0, 1.0, 1.0)
        self.assertWeights(schedule, 50, 1.0, 0.5 + 0.5 * math.cos(math.pi / 4))
        self.assertWeights(schedule, 100, 1.0, 0.5)
        self.assertWeights(schedule, 200, 1.0, 0.0)
        self.assertWeights(schedule, 300, 1.0, 0.0)
        self.assertEqual(build("cosine").num_iters, 1000)  # MAX_ITER 0: SOLVER.MAX_ITER

    def test_learned(self):
        schedule = build("learned", INSTANCE=2.0, SEMANTIC=0.5)
        self.assertWeights(schedule, 0, 2.0, 0.5)
        weights = schedule(7)
        reg = schedule.extra_losses()["loss_uncertainty"]
        self.assertAlmostEqual(float(reg), -math.log(2.0) - math.log(0.5), places=6)
        (weights.instance * 3.0 + weights.semantic * 4.0 + reg).backward()
        # d/ds_i of exp(-s_i) * 3 + s_i = -2 * 3 + 1; d/ds_s = -0.5 * 4 + 1
        self.assertTrue(torch.allclose(schedule.log_variances.grad, torch.tensor([-5.0, -1.0])))
        with self.assertRaises(ValueError):
            build("learned", SEMANTIC=0.0)


class TestWeighLosses(unittest.TestCase):
    """PanopticFPNExt.weigh_losses with a stand-in model (no network needed)."""

    def weigh(self, schedule, scale_rpn, iteration=0):
        model = SimpleNamespace(loss_weight_schedule=schedule, scale_rpn_losses=scale_rpn)
        one = torch.tensor(1.0)
        with EventStorage(iteration) as storage:
            losses = PanopticFPNExt.weigh_losses(
                model,
                {"loss_sem_seg": one},
                {"loss_rpn_cls": one, "loss_rpn_loc": one},
                {"loss_cls": one, "loss_box_reg": one, "loss_mask": one},
            )
            logged = {k: v[0] for k, v in storage.latest().items()}
        return {k: float(v) for k, v in losses.items()}, logged

    def test_weights_applied_and_logged(self):
        schedule = build("linear_warmup", START_INSTANCE=0.5, WARMUP_ITERS=10)
        losses, logged = self.weigh(schedule, scale_rpn=False, iteration=5)
        self.assertEqual(logged, {"lambda_instance": 0.75, "lambda_semantic": 0.25})
        self.assertEqual(losses["loss_sem_seg"], 0.25)
        self.assertEqual(losses["loss_rpn_cls"], 1.0)
        self.assertEqual(losses["loss_mask"], 0.75)
        losses, _ = self.weigh(schedule, scale_rpn=True, iteration=5)
        self.assertEqual(losses["loss_rpn_loc"], 0.75)

    def test_learned_adds_its_regularizer(self):
        losses, logged = self.weigh(build("learned"), scale_rpn=False)
        self.assertAlmostEqual(losses["loss_uncertainty"], math.log(2.0), places=6)
        self.assertAlmostEqual(logged["lambda_semantic"], 0.5, places=6)


class TestLearnedCheckpoint(unittest.TestCase):
    def test_round_trip(self):
        from detectron2.modeling import build_model

        cfg = get_model_zoo_cfg()
        cfg.MODEL.META_ARCHITECTURE = "PanopticFPNExt"
        cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME = "learned"
        model = build_model(cfg)
        self.assertIn("loss_weight_schedule.log_variances", model.state_dict())
        params = dict(model.named_parameters())
        self.assertIn("loss_weight_schedule.log_variances", params)  # so the optimizer trains it
        with torch.no_grad():
            model.loss_weight_schedule.log_variances.copy_(torch.tensor([0.3, -0.7]))
        with tempfile.TemporaryDirectory() as tmp:
            DetectionCheckpointer(model, save_dir=tmp).save("model_final")
            fresh = build_model(cfg)
            DetectionCheckpointer(fresh).load(f"{tmp}/model_final.pth")
        self.assertTrue(
            torch.equal(fresh.loss_weight_schedule.log_variances, torch.tensor([0.3, -0.7]))
        )
        self.assertAlmostEqual(float(fresh.loss_weight_schedule(0).semantic), math.exp(0.7), 5)


if __name__ == "__main__":
    unittest.main()
