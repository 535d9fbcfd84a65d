"""The body of ``train_net.py``: train, resume or evaluate a model from a YAML or Python config."""

import argparse
import logging
import os
from typing import Any, Optional, Sequence

from detectron2.engine import default_argument_parser, hooks
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from panoptic_ext.apps.train.checkpoint import read_last_checkpoint
from panoptic_ext.apps.train.config_check import ConfigError
from panoptic_ext.apps.train.config_loading import default_setup, save_config, setup_cfg
from panoptic_ext.apps.train.lazy_config import check_lazy_class_counts, load_lazy_config
from panoptic_ext.apps.train.resume_config import RunSettings
from panoptic_ext.apps.train.run_dir import prepare_output_dir
from panoptic_ext.apps.train.trainer import LazyTrainer, Trainer
from panoptic_ext.evaluation.report import write_report_for_dataset

__all__ = ["argument_parser", "main", "parse_args"]

logger = logging.getLogger(__name__)


def argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser``: --config-file, --resume, --eval-only,
    --num-gpus, --num-machines, --machine-rank, --dist-url and trailing overrides
    (``KEY VALUE`` for a YAML config, ``key=value`` for a Python config); and ``--report``."""
    parser = default_argument_parser(epilog=epilog)
    parser.add_argument(
        "--report",
        action="store_true",
        help="with --eval-only and a YAML config: also write the HTML evaluation report of each "
        "test dataset to OUTPUT_DIR/report/<dataset>/index.html (saves the panoptic PNGs)",
    )
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``train_net.py``'s command line (``sys.argv[1:]`` when ``argv`` is None)."""
    return argument_parser().parse_args(argv)


def _check_eval_weights(run: RunSettings, resume: bool) -> None:
    """``--eval-only`` needs weights: MODEL.WEIGHTS / train.init_checkpoint or, with
    ``resume``, a checkpoint in the output directory."""
    if run.weights or (resume and read_last_checkpoint(run.output_dir) is not None):
        return
    out = run.key("output_dir")
    raise ConfigError(
        f"--eval-only needs weights to evaluate, but {run.key('weights')} is empty"
        + (f" and {run.output_dir} has no last_checkpoint" if resume else "")
        + f": set {run.setting('weights', '<checkpoint>')} (e.g. {out}/model_final.pth), or "
        f"add --resume to evaluate {out}'s last checkpoint."
    )


def _evaluate(trainer_cls: Any, cfg: Any, run: RunSettings, resume: bool, report: bool = False):
    """Load the weights (or with ``resume`` the last checkpoint), every weight required, and
    evaluate them as training does (``trainer_cls.test``, and TTA with TEST.AUG.ENABLED); with
    ``report``, write each test dataset's HTML report."""
    model = trainer_cls.build_model(cfg)
    # every weight required: a missing one would be evaluated untrained
    run.checkpointer(model, require_complete=True).resume_or_load(run.weights, resume=resume)
    results = trainer_cls.test(cfg, model)
    if report and comm.is_main_process():
        for name in cfg.DATASETS.TEST:
            page = write_report_for_dataset(
                name,
                os.path.join(cfg.OUTPUT_DIR, "inference", name),
                os.path.join(cfg.OUTPUT_DIR, "report", name),
            )
            logger.info("Evaluation report of %s: %s", name, page["html"])
    if trainer_cls is Trainer:
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
    return results


def main(args: argparse.Namespace):
    """
    Train (``--resume``: continue from the output directory's last checkpoint) or, with
    ``--eval-only``, evaluate the configured weights (or, with ``--resume``, the last
    checkpoint) on the test datasets, from a YAML config (``KEY VALUE`` overrides,
    :class:`Trainer`) or a Python config (``.py``, ``key=value`` overrides, :class:`LazyTrainer`).
    With ``TEST.AUG.ENABLED``, a YAML config is also evaluated with test-time augmentation
    (results keyed ``<task>_TTA``).

    The output directory is locked for the run
    (:func:`~panoptic_ext.apps.train.run_dir.prepare_output_dir`): a second run there fails
    naming the first; a new training refuses to replace a previous run unless
    RUN.EXISTING_OUTPUT (``train.existing_output``) says to move or delete it; ``--resume`` lists
    its config changes and refuses those it cannot apply. ``config.yaml`` is written by a
    training only, once its weights or checkpoint loaded.

    Returns:
        the evaluation results (dict), or None if training ran no evaluation.
    """
    report = getattr(args, "report", False)
    if report and not (args.eval_only and not args.config_file.endswith(".py")):
        raise ConfigError("--report goes with --eval-only and a YAML config")
    if report:  # the report reads the evaluator's panoptic PNGs
        args.opts = list(args.opts) + ["TEST.SAVE_PANOPTIC_PNGS", "True"]
    if args.config_file.endswith(".py"):
        cfg = load_lazy_config(args.config_file, args.opts)
        check_lazy_class_counts(cfg)  # before any model is built
        trainer_cls, run = LazyTrainer, RunSettings.from_lazy(cfg)
    else:
        cfg = setup_cfg(args, log=False)
        trainer_cls, run = Trainer, RunSettings.from_cfg(cfg)
    if args.eval_only:
        _check_eval_weights(run, args.resume)
    lock, messages = prepare_output_dir(run, resume=args.resume, eval_only=args.eval_only)
    try:
        default_setup(cfg, args, save=False)
        for message in messages:
            logger.warning(message)
        if args.eval_only:
            return _evaluate(trainer_cls, cfg, run, args.resume, report)
        trainer = trainer_cls(cfg)
        if trainer_cls is Trainer and cfg.TEST.AUG.ENABLED:  # as detectron2's train_net.py
            trainer.register_hooks(
                [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
            )
        trainer.resume_or_load(resume=args.resume)
        save_config(cfg)
        return trainer.train()
    finally:
        if lock is not None:
            lock.release()
