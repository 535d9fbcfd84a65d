"""The body of ``train_net.py``: train, resume or evaluate a model from a config."""

import argparse
import logging
import os
from typing import Optional, Sequence

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, hooks
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from ..modeling import optimize_for_cpu_inference
from .checkpoint import PanopticCheckpointer
from .config_check import ConfigError
from .config_loading import default_setup, setup_cfg
from .run_dir import prepare_output_dir
from .trainer import Trainer

__all__ = ["argument_parser", "main", "parse_args"]

logger = logging.getLogger(__name__)


def argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser``: --config-file, --resume, --eval-only,
    --num-gpus, --num-machines, --machine-rank, --dist-url and trailing ``KEY VALUE`` opts."""
    return default_argument_parser(epilog=epilog)


def _check_eval_weights(cfg: CfgNode, resume: bool) -> None:
    has_checkpoint = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if (resume and has_checkpoint) or cfg.MODEL.WEIGHTS:
        return
    raise ConfigError(
        "--eval-only needs weights to evaluate, but MODEL.WEIGHTS is empty"
        + (f" and {cfg.OUTPUT_DIR} has no last_checkpoint" if resume else "")
        + ": set MODEL.WEIGHTS <checkpoint> (e.g. OUTPUT_DIR/model_final.pth), or add --resume "
        "to evaluate OUTPUT_DIR's last checkpoint."
    )


def _evaluate(cfg: CfgNode, resume: bool):
    model = Trainer.build_model(cfg)
    PanopticCheckpointer(
        model,
        save_dir=cfg.OUTPUT_DIR,
        allow_partial=cfg.MODEL.PANOPTIC_EXT.ALLOW_PARTIAL_WEIGHTS,
        require_complete=True,  # a missing weight would be evaluated untrained
        download_timeout=cfg.MODEL.PANOPTIC_EXT.CHECKPOINT.DOWNLOAD_TIMEOUT,
    ).resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    if next(model.parameters()).device.type == "cpu":
        optimize_for_cpu_inference(model.eval())  # same outputs, faster
    results = Trainer.test(cfg, model)
    if cfg.TEST.AUG.ENABLED:
        results.update(Trainer.test_with_TTA(cfg, model))
    if comm.is_main_process():
        verify_results(cfg, results)
    return results


def main(args: argparse.Namespace):
    """
    Train (``--resume``: continue from OUTPUT_DIR's last checkpoint) or, with ``--eval-only``,
    evaluate MODEL.WEIGHTS (or, with ``--resume``, OUTPUT_DIR's last checkpoint) on
    DATASETS.TEST. With ``TEST.AUG.ENABLED``, also evaluated with test-time augmentation
    (:meth:`Trainer.test_with_TTA`; results keyed ``<task>_TTA``).

    OUTPUT_DIR is locked for the run (:func:`~panoptic_ext.engine.run_dir.prepare_output_dir`):
    a second run there fails naming the first; a new training refuses to replace a previous run
    unless MODEL.PANOPTIC_EXT.EXISTING_OUTPUT says to move or delete it; ``--resume`` lists its
    config changes and refuses those it cannot apply.

    Returns:
        the evaluation results (dict), or None if training ran no evaluation.
    """
    cfg = setup_cfg(args, log=False)
    if args.eval_only:
        _check_eval_weights(cfg, args.resume)
    lock, messages = prepare_output_dir(cfg, resume=args.resume, eval_only=args.eval_only)
    try:
        default_setup(cfg, args)
        for message in messages:
            logger.warning(message)
        if args.eval_only:
            return _evaluate(cfg, args.resume)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        if cfg.TEST.AUG.ENABLED:  # after the last iteration, as detectron2's train_net.py
            trainer.register_hooks(
                [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
            )
        return trainer.train()
    finally:
        if lock is not None:
            lock.release()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``train_net.py``'s command line (``sys.argv[1:]`` when ``argv`` is None)."""
    return argument_parser().parse_args(argv)
