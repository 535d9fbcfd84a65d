"""``Trainer``: detectron2's ``DefaultTrainer`` with panoptic_ext's data, evaluators, optimizers."""

import logging
import os
from collections import OrderedDict
from typing import Any, Optional

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators

from panoptic_ext.data.mapper import PanopticFPNDatasetMapper
from panoptic_ext.evaluation import build_panoptic_evaluators
from panoptic_ext.modeling import PanopticFPNWithTTA
from panoptic_ext.apps.train.resume import prepare_train_loader
from panoptic_ext.apps.train.solver import build_optimizer
from panoptic_ext.apps.train.trainer_state import ResumableTrainerMixin, run_checkpointer, safety_hooks

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


class Trainer(ResumableTrainerMixin, DefaultTrainer):
    """
    detectron2's ``DefaultTrainer`` (checkpoints, TensorBoard events and ``metrics.json`` in
    OUTPUT_DIR, evaluation every TEST.EVAL_PERIOD iterations and after the last one) with:

    - ``PanopticFPNDatasetMapper`` for the train and test loaders;
    - evaluators picked by the dataset's ``evaluator_type``
      (:func:`panoptic_ext.evaluation.build_panoptic_evaluators`);
    - the optimizer named by ``SOLVER.OPTIMIZER``;
    - atomic checkpoints (with the config saved in each, and the newest
      ``SOLVER.CHECKPOINT_MAX_TO_KEEP`` periodic ones kept) and strict loading
      (:class:`PanopticCheckpointer`), a stop at the first non-finite loss
      (:class:`NonFiniteLossGuard`), and resuming that repeats an uninterrupted run
      (:class:`ResumeState`, :func:`prepare_train_loader`, which also lets records be skipped);
    - :meth:`test_with_TTA` (``TEST.AUG.ENABLED``): evaluation with test-time augmentation;
    - ``--resume`` applies the current config's solver hyper-parameters (detectron2 keeps the
      checkpoint's learning rates), and refuses a checkpoint whose model or optimizer state does
      not fit the current config, or that leaves no iteration to train.
    """

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        loader = build_detection_train_loader(cfg, mapper=PanopticFPNDatasetMapper(cfg, True))
        return prepare_train_loader(loader)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=PanopticFPNDatasetMapper(cfg, False)
        )

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        """
        The evaluators of ``dataset_name``'s ``evaluator_type``; their files go to
        ``output_folder`` (default ``OUTPUT_DIR/inference/<dataset_name>``).
        """
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluators = build_panoptic_evaluators(cfg, dataset_name, output_folder)
        if isinstance(evaluators, DatasetEvaluator):
            return evaluators
        if not evaluators:
            # DefaultTrainer.test skips a dataset whose build_evaluator raises this.
            raise NotImplementedError(f"no evaluator for dataset {dataset_name!r}")
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(list(evaluators))

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model) -> "OrderedDict[str, Any]":
        """
        Evaluate ``model`` wrapped in :class:`PanopticFPNWithTTA` (``TEST.AUG``) on
        DATASETS.TEST, as detectron2's ``tools/train_net.py``: files go to
        ``OUTPUT_DIR/inference_TTA/<dataset>``, results are keyed ``<task>_TTA``.
        """
        logger.info("Running inference with test-time augmentation ...")
        tta_model = PanopticFPNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, tta_model, evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in results.items())

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model):
        return build_optimizer(cfg, model)

    def build_hooks(self):
        # Replaces DefaultTrainer's checkpointer before its hooks take it.
        self.checkpointer = run_checkpointer(
            self,
            self.cfg.OUTPUT_DIR,
            allow_partial=self.cfg.RUN.ALLOW_PARTIAL_WEIGHTS,
            max_to_keep=self.cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP,
            download_timeout=self.cfg.RUN.WEIGHTS_DOWNLOAD_TIMEOUT,
            config_text=self.cfg.dump(),
        )
        cfg = self.cfg
        hooks = safety_hooks(cfg.SEED, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS)
        return hooks + super().build_hooks()

    def _load_weights(self, resume: bool) -> None:
        DefaultTrainer.resume_or_load(self, resume=resume)

    def train(self):
        """
        Run training.

        Returns:
            OrderedDict or None: the results of the last evaluation, if there was one.
        """
        super().train()
        # DefaultTrainer only returns them when TEST.EXPECTED_RESULTS is set.
        return getattr(self, "_last_eval_results", None)
