"""The two trainers of ``train_net.py``, one per config language, with the same run management:

- :class:`Trainer`: detectron2's ``DefaultTrainer`` for a YAML config, with the project's data,
  evaluators and optimizers;
- :class:`LazyTrainer`: a Python config (detectron2 LazyConfig), trained as detectron2's
  ``tools/lazyconfig_train_net.py`` does, in ``DefaultTrainer``'s order of construction (so a
  Python config and its YAML twin train the same run).

Both save atomic checkpoints holding the run's config and the optimizer's state, keep the newest
periodic ones, load strictly (:class:`PanopticCheckpointer`), stop at the first non-finite loss
(:class:`NonFiniteLossGuard`), resume as an uninterrupted run would have gone on
(:class:`ResumeState`), and on ``--resume`` apply the current config's solver hyper-parameters
(detectron2 keeps the checkpoint's) and refuse a checkpoint whose model or optimizer state does
not fit, or that leaves no iteration to train. Both evaluate with the same modules during
training and with ``--eval-only`` (:func:`apply_cpu_speedups`).
"""

import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
from detectron2.config import CfgNode, instantiate
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    default_writers,
    hooks,
)
from detectron2.evaluation import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_on_dataset,
    print_csv_format,
)
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from panoptic_ext.apps.train.checkpoint import CheckpointError, PanopticCheckpointer
from panoptic_ext.apps.train.fault_hooks import NonFiniteLossGuard
from panoptic_ext.apps.train.lazy_config import lazy_config_text
from panoptic_ext.apps.train.resume import ResumeState, prepare_train_loader
from panoptic_ext.apps.train.resume_config import (
    RunSettings,
    apply_current_hyperparameters,
    check_optimizer_state,
    nothing_to_train,
)
from panoptic_ext.apps.train.solver import build_optimizer
from panoptic_ext.compat import create_ddp_model, default_trainer_results, simple_trainer_of
from panoptic_ext.data.mapper import PanopticFPNDatasetMapper
from panoptic_ext.evaluation import build_panoptic_evaluators
from panoptic_ext.modeling import PanopticFPNWithTTA, optimize_for_cpu_inference

__all__ = ["LazyTrainer", "Trainer", "apply_cpu_speedups"]

logger = logging.getLogger(__name__)


def apply_cpu_speedups(model: torch.nn.Module, enabled: bool) -> None:
    """
    With ``enabled`` (TEST.CPU_SPEEDUPS / train.cpu_speedups) and ``model`` on the CPU, apply
    :func:`~panoptic_ext.modeling.optimize_for_cpu_inference` (same outputs, faster) before an
    evaluation. The pass needs eval mode; the model's mode is restored afterwards, and the
    swapped modules run the original code under autograd, so training goes on unchanged.
    """
    model = model.module if isinstance(model, DistributedDataParallel) else model
    if not enabled or not isinstance(model, torch.nn.Module):  # e.g. an exported model's runtime
        return
    if any(p.device.type != "cpu" for p in model.parameters()):
        return
    training = model.training
    optimize_for_cpu_inference(model.eval())
    model.train(training)


class _RunMixin:
    """
    Run management shared by both trainers, which have ``run`` (:class:`RunSettings`),
    ``checkpointer``, ``optimizer``, ``scheduler``, ``start_iter`` and ``max_iter``.
    """

    run: RunSettings

    def _run_checkpointer(self, config_text: str, max_to_keep: int) -> PanopticCheckpointer:
        """Atomic saves of the model and trainer (optimizer, scheduler, hooks) with the run's
        config (what ``--resume`` compares with), strict loads, the newest periodic ones kept."""
        return self.run.checkpointer(
            self.model,
            max_to_keep=max_to_keep,
            extra_state={"config": config_text},
            trainer=weakref.proxy(self),
        )

    def _safety_hooks(self, seed: int, images_per_batch: int, num_workers: int) -> List[Any]:
        """The hooks that go first: a stop at the first non-finite loss, and per-iteration seeds
        and data position that make a resumed run repeat an uninterrupted one."""
        per_process = images_per_batch // comm.get_world_size()
        return [NonFiniteLossGuard(), ResumeState(seed, per_process, num_workers)]

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        # detectron2 v0.6 leaves out the SimpleTrainer's state, i.e. the optimizer's, so
        # --resume would restart AdamW's moments / SGD's momentum (detectron2 main saves it).
        ret.setdefault("_trainer", simple_trainer_of(self).state_dict())
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        run = self.run
        saved_optimizer = state_dict.get("_trainer", {}).get("optimizer")
        if saved_optimizer is not None:
            problem = check_optimizer_state(saved_optimizer, self.optimizer, run.key("optimizer"))
            if problem:
                out = run.key("output_dir")
                raise CheckpointError(
                    f"--resume cannot continue the run of {self.checkpointer.get_checkpoint_file()}"
                    f": {problem}. Resume with the run's config (saved in the checkpoint and in "
                    f"{out}/config.yaml), or start a new run (another {out}, no --resume) from "
                    f"its weights with {run.setting('weights', '<checkpoint>')}."
                )
        current = [
            {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
        ]
        super().load_state_dict(state_dict)  # detectron2 main also loads "_trainer": idempotent
        if "_trainer" in state_dict:
            simple_trainer_of(self).load_state_dict(state_dict["_trainer"])
        # The checkpoint's learning rates, weight decay, ... would silently override the config's.
        apply_current_hyperparameters(self.optimizer, self.scheduler, current)

    def resume_or_load(self, resume: bool = True) -> None:
        """
        detectron2's ``DefaultTrainer.resume_or_load``: with ``resume`` and a checkpoint in the
        output directory, continue it (every weight must fit: partial loading applies to a new
        run's initial weights only, and an iteration must be left); otherwise load the
        configured weights and start at iteration 0.

        Raises:
            CheckpointError: the checkpoint does not fit the current config.
            ResumeConfigError: max_iter leaves no iteration to train.
        """
        checkpointer, run = self.checkpointer, self.run
        if not (resume and checkpointer.has_checkpoint()):
            checkpointer.resume_or_load(run.weights, resume=resume)
            return
        path = checkpointer.get_checkpoint_file()
        checkpointer.allow_partial = False
        try:
            checkpointer.resume_or_load(run.weights, resume=True)
        except CheckpointError as e:
            if "do not fit the model" not in str(e):
                raise
            raise CheckpointError(
                f"--resume cannot continue the run of {path} with the model of this config "
                "(other class counts or architecture). To train this model from that run's "
                f"weights, start a new run (another {run.key('output_dir')}, no --resume) with "
                f"{run.setting('weights', path)} {run.setting('allow_partial', True)}.\n{e}"
            ) from e
        finally:
            checkpointer.allow_partial = run.allow_partial
        self.start_iter = self.iter + 1  # the checkpoint holds the iteration that just finished
        if self.start_iter >= self.max_iter:
            raise nothing_to_train(path, self.start_iter, run)


class Trainer(_RunMixin, DefaultTrainer):
    """
    detectron2's ``DefaultTrainer`` (checkpoints, TensorBoard events and ``metrics.json`` in
    OUTPUT_DIR, evaluation every TEST.EVAL_PERIOD iterations and after the last one) with
    ``PanopticFPNDatasetMapper``, the evaluators of the dataset's ``evaluator_type``
    (:func:`panoptic_ext.evaluation.build_panoptic_evaluators`), the optimizer of
    ``SOLVER.OPTIMIZER``, :meth:`test_with_TTA` and the run management of the module docstring.
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
    def build_optimizer(cls, cfg: CfgNode, model):
        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg: CfgNode, model, evaluators=None) -> "OrderedDict[str, Any]":
        """``DefaultTrainer.test``, with the CPU speed-ups of TEST.CPU_SPEEDUPS."""
        apply_cpu_speedups(model, cfg.TEST.CPU_SPEEDUPS)
        return super().test(cfg, model, evaluators)

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

    def build_hooks(self):
        cfg = self.cfg
        self.run = RunSettings.from_cfg(cfg)
        # Replaces DefaultTrainer's checkpointer before its hooks take it.
        self.checkpointer = self._run_checkpointer(cfg.dump(), cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP)
        ret = self._safety_hooks(cfg.SEED, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS)
        return ret + super().build_hooks()

    def train(self) -> Optional["OrderedDict[str, Any]"]:
        """Run training; returns the results of the last evaluation, if there was one
        (DefaultTrainer returns them only when TEST.EXPECTED_RESULTS is set)."""
        super().train()
        return default_trainer_results(self)


class LazyTrainer(_RunMixin, TrainerBase):
    """
    The trainer of a Python config: detectron2's AMP (``train.amp.enabled``), then its timer, LR
    scheduler, periodic checkpointer (``train.checkpointer.period``), evaluation
    (``train.eval_period`` and after the last iteration) and writers (``metrics.json``,
    TensorBoard, log) every ``train.log_period`` iterations, with the run management of the
    module docstring. ``build_model`` and ``test`` are :class:`Trainer`'s for a Python config.
    """

    def __init__(self, cfg):
        super().__init__()
        train = cfg.train
        self.cfg, self.run = cfg, RunSettings.from_lazy(cfg)
        config_text = lazy_config_text(cfg)
        model = self.build_model(cfg)
        cfg.optimizer.params.model = model
        try:
            optimizer = instantiate(cfg.optimizer)
        finally:
            del cfg.optimizer.params["model"]  # the config stays serializable
        data_loader = prepare_train_loader(instantiate(cfg.dataloader.train))
        model = create_ddp_model(model, **train.ddp)
        trainer_type = AMPTrainer if train.amp.enabled else SimpleTrainer
        self._trainer = trainer_type(model, data_loader, optimizer)
        self.scheduler = LRMultiplier(
            optimizer, multiplier=instantiate(cfg.lr_multiplier), max_iter=train.max_iter
        )
        self.checkpointer = self._run_checkpointer(config_text, train.checkpointer.max_to_keep)
        self.start_iter, self.max_iter = 0, train.max_iter
        self._last_eval_results = None
        self.register_hooks(self.build_hooks())

    model = property(lambda self: self._trainer.model)
    data_loader = property(lambda self: self._trainer.data_loader)
    optimizer = property(lambda self: self._trainer.optimizer)

    @classmethod
    def build_model(cls, cfg) -> torch.nn.Module:
        """``cfg.model`` instantiated on ``cfg.train.device``."""
        model = instantiate(cfg.model)
        model.to(torch.device(cfg.train.device))
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def test(cls, cfg, model: torch.nn.Module) -> Dict[str, Any]:
        """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator`` (with
        the CPU speed-ups of ``train.cpu_speedups``); e.g. ``{"panoptic_seg": {...}}``."""
        apply_cpu_speedups(model, cfg.train.cpu_speedups)
        data_loader = instantiate(cfg.dataloader.test)
        results = inference_on_dataset(model, data_loader, instantiate(cfg.dataloader.evaluator))
        if comm.is_main_process():
            logger.info(
                "Evaluation results for %s in csv format:", cfg.dataloader.test.dataset.names
            )
            print_csv_format(results)
        return results

    def build_hooks(self) -> List[Any]:
        train, loader = self.cfg.train, self.cfg.dataloader.train
        ret = self._safety_hooks(train.seed, loader.total_batch_size, loader.num_workers)
        ret += [hooks.IterationTimer(), hooks.LRScheduler()]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, train.checkpointer.period))

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        ret.append(hooks.EvalHook(train.eval_period, test_and_save_results))
        if comm.is_main_process():
            writers = default_writers(train.output_dir, self.max_iter)
            ret.append(hooks.PeriodicWriter(writers, period=train.log_period))
        return ret

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def train(self) -> Optional[Dict[str, Any]]:
        """Train from ``start_iter`` to ``max_iter``; returns the last evaluation's results."""
        super().train(self.start_iter, self.max_iter)
        return self._last_eval_results
