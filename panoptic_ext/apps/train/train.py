"""The body of ``train_net.py``: train, resume or evaluate a model from a YAML or Python config."""

import argparse
import logging
import os
from typing import Any, Callable, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, hooks
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from panoptic_ext.modeling import optimize_for_cpu_inference
from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer
from panoptic_ext.apps.train.config_check import ConfigError
from panoptic_ext.apps.train.config_loading import default_setup, setup_cfg
from panoptic_ext.apps.train.resume_config import RunSettings
from panoptic_ext.apps.train.run_dir import prepare_output_dir
from panoptic_ext.apps.train.trainer import Trainer

__all__ = ["argument_parser", "evaluate_weights", "main", "parse_args", "run_in_output_dir"]

logger = logging.getLogger(__name__)


def argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser``: --config-file, --resume, --eval-only,
    --num-gpus, --num-machines, --machine-rank, --dist-url and trailing overrides
    (``KEY VALUE`` for a YAML config, ``key=value`` for a Python config)."""
    return default_argument_parser(epilog=epilog)


def check_eval_weights(run: RunSettings, weights: str, resume: bool) -> None:
    """``--eval-only`` needs weights: ``weights`` (MODEL.WEIGHTS / train.init_checkpoint) or,
    with ``resume``, a checkpoint in the output directory."""
    has_checkpoint = os.path.isfile(os.path.join(run.output_dir, "last_checkpoint"))
    if (resume and has_checkpoint) or weights:
        return
    key = run.weights_format.format("").strip(" =")
    raise ConfigError(
        f"--eval-only needs weights to evaluate, but {key} is empty"
        + (f" and {run.output_dir} has no last_checkpoint" if resume else "")
        + f": set {run.weights_format.format('<checkpoint>')} (e.g. "
        f"{run.output_dir_key}/model_final.pth), or add --resume to evaluate "
        f"{run.output_dir_key}'s last checkpoint."
    )


def evaluate_weights(
    model: torch.nn.Module,
    test: Callable[[torch.nn.Module], Any],
    *,
    output_dir: str,
    weights: str,
    resume: bool,
    allow_partial: bool,
    download_timeout: float,
):
    """Load ``weights`` (or, with ``resume``, ``output_dir``'s last checkpoint) into ``model``,
    every weight required, apply the CPU inference speed-ups, and return ``test(model)``."""
    PanopticCheckpointer(
        model,
        save_dir=output_dir,
        allow_partial=allow_partial,
        require_complete=True,  # a missing weight would be evaluated untrained
        download_timeout=download_timeout,
    ).resume_or_load(weights, resume=resume)
    if next(model.parameters()).device.type == "cpu":
        optimize_for_cpu_inference(model.eval())  # same outputs, faster
    return test(model)


def run_in_output_dir(
    cfg: Any,
    run: RunSettings,
    args: argparse.Namespace,
    evaluate: Callable[[], Any],
    make_trainer: Callable[[], Any],
):
    """
    The run of ``train_net.py`` for either config system: lock the output directory and check
    it (:func:`~panoptic_ext.apps.train.run_dir.prepare_output_dir`), set up logging and seeds, then
    ``evaluate()`` (``--eval-only``) or train ``make_trainer()`` (``--resume``: from the last
    checkpoint); the lock is released at the end.
    """
    lock, messages = prepare_output_dir(run, resume=args.resume, eval_only=args.eval_only)
    try:
        default_setup(cfg, args)
        for message in messages:
            logger.warning(message)
        if args.eval_only:
            return evaluate()
        trainer = make_trainer()
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()
    finally:
        if lock is not None:
            lock.release()


def _test(cfg: CfgNode, model: torch.nn.Module):
    """Trainer.test, and with TEST.AUG.ENABLED also the TTA evaluation (``<task>_TTA`` keys)."""
    results = Trainer.test(cfg, model)
    if cfg.TEST.AUG.ENABLED:
        results.update(Trainer.test_with_TTA(cfg, model))
    return results


def _make_trainer(cfg: CfgNode) -> Trainer:
    trainer = Trainer(cfg)
    if cfg.TEST.AUG.ENABLED:  # after the last iteration, as detectron2's train_net.py
        trainer.register_hooks(
            [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
        )
    return trainer


def _evaluate(cfg: CfgNode, resume: bool):
    results = evaluate_weights(
        Trainer.build_model(cfg),
        lambda model: _test(cfg, model),
        output_dir=cfg.OUTPUT_DIR,
        weights=cfg.MODEL.WEIGHTS,
        resume=resume,
        allow_partial=cfg.RUN.ALLOW_PARTIAL_WEIGHTS,
        download_timeout=cfg.RUN.WEIGHTS_DOWNLOAD_TIMEOUT,
    )
    if comm.is_main_process():
        verify_results(cfg, results)
    return results


def main(args: argparse.Namespace):
    """
    Train (``--resume``: continue from OUTPUT_DIR's last checkpoint) or, with ``--eval-only``,
    evaluate MODEL.WEIGHTS (or, with ``--resume``, OUTPUT_DIR's last checkpoint) on
    DATASETS.TEST. With ``TEST.AUG.ENABLED``, also evaluated with test-time augmentation
    (:meth:`Trainer.test_with_TTA`; results keyed ``<task>_TTA``). A ``.py`` config file runs
    through :func:`~.lazy_train.lazy_main`.

    OUTPUT_DIR is locked for the run (:func:`~panoptic_ext.apps.train.run_dir.prepare_output_dir`):
    a second run there fails naming the first; a new training refuses to replace a previous run
    unless RUN.EXISTING_OUTPUT says to move or delete it; ``--resume`` lists its
    config changes and refuses those it cannot apply.

    Returns:
        the evaluation results (dict), or None if training ran no evaluation.
    """
    if args.config_file.endswith(".py"):
        from panoptic_ext.apps.train.lazy_train import lazy_main

        return lazy_main(args)
    cfg = setup_cfg(args, log=False)
    run = RunSettings.from_cfg(cfg)
    if args.eval_only:
        check_eval_weights(run, cfg.MODEL.WEIGHTS, args.resume)
    return run_in_output_dir(
        cfg, run, args, lambda: _evaluate(cfg, args.resume), lambda: _make_trainer(cfg)
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``train_net.py``'s command line (``sys.argv[1:]`` when ``argv`` is None)."""
    return argument_parser().parse_args(argv)
