"""The body of ``train_net.py``: train, resume or evaluate a model from a config."""

import argparse
import logging
from typing import Optional, Sequence

from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from ..modeling import optimize_for_cpu_inference
from .checkpoint import PanopticCheckpointer
from .config_loading import setup_cfg
from .trainer import Trainer

__all__ = ["argument_parser", "main", "parse_args"]

logger = logging.getLogger(__name__)


def argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser``: --config-file, --resume, --eval-only,
    --num-gpus, --num-machines, --machine-rank, --dist-url and trailing ``KEY VALUE`` opts."""
    return default_argument_parser(epilog=epilog)


def main(args: argparse.Namespace):
    """
    Train (``--resume``: continue from OUTPUT_DIR's last checkpoint) or, with ``--eval-only``,
    evaluate MODEL.WEIGHTS on DATASETS.TEST.

    Returns:
        the evaluation results (dict), or None if training ran no evaluation.
    """
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        PanopticCheckpointer(
            model,
            save_dir=cfg.OUTPUT_DIR,
            allow_partial=cfg.MODEL.PANOPTIC_EXT.ALLOW_PARTIAL_WEIGHTS,
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        if next(model.parameters()).device.type == "cpu":
            optimize_for_cpu_inference(model.eval())  # same outputs, faster
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``train_net.py``'s command line (``sys.argv[1:]`` when ``argv`` is None)."""
    return argument_parser().parse_args(argv)
