"""``Trainer``: detectron2's ``DefaultTrainer`` with panoptic_ext's data, evaluators, optimizers."""

import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict, Optional

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm

from ..data.mapper import PanopticFPNDatasetMapper
from ..evaluation import build_panoptic_evaluators
from ..modeling import PanopticFPNWithTTA
from .checkpoint import CheckpointError, PanopticCheckpointer
from .fault_hooks import NonFiniteLossGuard
from .resume import ResumeState, prepare_train_loader
from .resume_config import apply_current_hyperparameters, check_optimizer_state, nothing_to_train
from .solver import build_optimizer

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """
    detectron2's ``DefaultTrainer`` (checkpoints, TensorBoard events and ``metrics.json`` in
    OUTPUT_DIR, evaluation every TEST.EVAL_PERIOD iterations and after the last one) with:

    - ``PanopticFPNDatasetMapper`` for the train and test loaders;
    - evaluators picked by the dataset's ``evaluator_type``
      (:func:`panoptic_ext.evaluation.build_panoptic_evaluators`);
    - the optimizer named by ``MODEL.PANOPTIC_EXT.SOLVER.OPTIMIZER``;
    - atomic checkpoints (with the config saved in each, and the newest
      ``MODEL.PANOPTIC_EXT.CHECKPOINT.MAX_TO_KEEP`` periodic ones kept) and strict loading
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
        ext = self.cfg.MODEL.PANOPTIC_EXT
        self.checkpointer = PanopticCheckpointer(
            self.model,
            self.cfg.OUTPUT_DIR,
            allow_partial=ext.ALLOW_PARTIAL_WEIGHTS,
            max_to_keep=ext.CHECKPOINT.MAX_TO_KEEP,
            download_timeout=ext.CHECKPOINT.DOWNLOAD_TIMEOUT,
            extra_state={"config": self.cfg.dump()},  # what --resume compares its config with
            trainer=weakref.proxy(self),
        )
        resume_state = ResumeState(
            self.cfg.SEED,
            self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(),
            self.cfg.DATALOADER.NUM_WORKERS,
        )
        return [NonFiniteLossGuard(), resume_state] + super().build_hooks()

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        # detectron2 v0.6 leaves out the SimpleTrainer's state, i.e. the optimizer's, so
        # --resume would restart AdamW's moments / SGD's momentum (detectron2 main saves it).
        if "_trainer" not in ret:
            ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        saved_optimizer = state_dict.get("_trainer", {}).get("optimizer")
        if saved_optimizer is not None:
            problem = check_optimizer_state(saved_optimizer, self.optimizer)
            if problem:
                raise CheckpointError(
                    f"--resume cannot continue the run of {self.checkpointer.get_checkpoint_file()}"
                    f": {problem}. Resume with the run's config (saved in the checkpoint and in "
                    "OUTPUT_DIR/config.yaml), or start a new run (another OUTPUT_DIR, no --resume) "
                    "from its weights with MODEL.WEIGHTS."
                )
        current = [
            {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
        ]
        super().load_state_dict(state_dict)  # detectron2 main also loads "_trainer": idempotent
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        # The checkpoint's learning rates, weight decay, ... would silently override the config's.
        apply_current_hyperparameters(self.optimizer, getattr(self, "scheduler", None), current)

    def resume_or_load(self, resume: bool = True) -> None:
        """
        detectron2's ``resume_or_load``; with ``resume`` and a checkpoint in OUTPUT_DIR, every
        weight must fit (ALLOW_PARTIAL_WEIGHTS applies to MODEL.WEIGHTS only) and an iteration
        must be left to train.

        Raises:
            CheckpointError: the checkpoint does not fit the current config.
            ResumeConfigError: SOLVER.MAX_ITER leaves no iteration to train.
        """
        if not (resume and self.checkpointer.has_checkpoint()):
            return super().resume_or_load(resume=resume)
        path = self.checkpointer.get_checkpoint_file()
        allow_partial, self.checkpointer.allow_partial = self.checkpointer.allow_partial, False
        try:
            super().resume_or_load(resume=True)
        except CheckpointError as e:
            if "do not fit the model" not in str(e):
                raise
            raise CheckpointError(
                f"--resume cannot continue the run of {path} with the model of this config "
                "(other class counts or architecture). To train this model from that run's "
                "weights, start a new run (another OUTPUT_DIR, no --resume) with MODEL.WEIGHTS "
                f"{path} MODEL.PANOPTIC_EXT.ALLOW_PARTIAL_WEIGHTS True.\n{e}"
            ) from e
        finally:
            self.checkpointer.allow_partial = allow_partial
        if self.start_iter >= self.max_iter:
            raise nothing_to_train(path, self.start_iter, self.max_iter)

    def train(self):
        """
        Run training.

        Returns:
            OrderedDict or None: the results of the last evaluation, if there was one.
        """
        super().train()
        # DefaultTrainer only returns them when TEST.EXPECTED_RESULTS is set.
        return getattr(self, "_last_eval_results", None)
