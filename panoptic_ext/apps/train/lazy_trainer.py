"""``LazyTrainer``: the project's training loop for Python configs (detectron2 LazyConfig)."""

import logging
from typing import Any, Dict, Optional

import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, TrainerBase, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from omegaconf import DictConfig

from panoptic_ext.compat import create_ddp_model
from panoptic_ext.apps.train.lazy_config import lazy_config_text
from panoptic_ext.apps.train.resume import prepare_train_loader
from panoptic_ext.apps.train.trainer_state import ResumableTrainerMixin, run_checkpointer, safety_hooks

__all__ = ["LazyTrainer", "build_lazy_model", "lazy_test"]

logger = logging.getLogger(__name__)


def build_lazy_model(cfg: DictConfig) -> torch.nn.Module:
    """Instantiate ``cfg.model`` on ``cfg.train.device`` (what ``Trainer.build_model`` does for
    a yacs config)."""
    model = instantiate(cfg.model)
    model.to(torch.device(cfg.train.device))
    logger.info("Model:\n%s", model)
    return model


def lazy_test(cfg: DictConfig, model: torch.nn.Module) -> Dict[str, Any]:
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator`` (as
    ``Trainer.test`` for a yacs config); returns the results, e.g. ``{"panoptic_seg": {...}}``."""
    data_loader = instantiate(cfg.dataloader.test)
    evaluator = instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(model, data_loader, evaluator)
    if comm.is_main_process():
        logger.info("Evaluation results for %s in csv format:", cfg.dataloader.test.dataset.names)
        print_csv_format(results)
    return results


class LazyTrainer(ResumableTrainerMixin, TrainerBase):
    """
    The project's ``Trainer`` for a Python config: the same model / optimizer / data order of
    construction as detectron2's ``DefaultTrainer`` (so a Python config and its YAML twin train
    the same run), detectron2's AMP (``train.amp.enabled``), the project's checkpointer, safety
    hooks and ``--resume`` checks (:mod:`.trainer_state`), then detectron2's timer, LR scheduler,
    periodic checkpointer (``train.checkpointer.period``), evaluation (``train.eval_period`` and
    after the last iteration) and writers (``metrics.json``, TensorBoard, log) every
    ``train.log_period`` iterations.
    """

    _output_dir_key = "train.output_dir"
    _max_iter_key = "train.max_iter"
    _weights_format = "train.init_checkpoint={}"
    _allow_partial_override = "train.allow_partial_weights=True"

    def __init__(self, cfg: DictConfig):
        super().__init__()
        train = cfg.train
        config_text = lazy_config_text(cfg)
        model = build_lazy_model(cfg)
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
        self.checkpointer = run_checkpointer(
            self,
            train.output_dir,
            allow_partial=train.allow_partial_weights,
            max_to_keep=train.checkpointer.max_to_keep,
            download_timeout=train.download_timeout,
            config_text=config_text,
        )
        self.start_iter = 0
        self.max_iter = train.max_iter
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    model = property(lambda self: self._trainer.model)
    data_loader = property(lambda self: self._trainer.data_loader)
    optimizer = property(lambda self: self._trainer.optimizer)

    def build_hooks(self):
        cfg, train = self.cfg, self.cfg.train
        loader = cfg.dataloader.train
        ret = safety_hooks(train.seed, loader.total_batch_size, loader.num_workers)
        ret += [hooks.IterationTimer(), hooks.LRScheduler()]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, train.checkpointer.period))
        ret.append(hooks.EvalHook(train.eval_period, self._test_and_save_results))
        if comm.is_main_process():
            writers = default_writers(train.output_dir, self.max_iter)
            ret.append(hooks.PeriodicWriter(writers, period=train.log_period))
        return ret

    def _test_and_save_results(self) -> Dict[str, Any]:
        self._last_eval_results = lazy_test(self.cfg, self.model)
        return self._last_eval_results

    def _load_weights(self, resume: bool) -> None:
        self.checkpointer.resume_or_load(self.cfg.train.init_checkpoint, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # the checkpoint holds the iteration that just finished
            self.start_iter = self.iter + 1

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def train(self) -> Optional[Dict[str, Any]]:
        """Train from ``start_iter`` to ``max_iter``; returns the last evaluation's results."""
        super().train(self.start_iter, self.max_iter)
        return getattr(self, "_last_eval_results", None)
