"""Command lines of ``tools/export_model.py`` (export) and ``tools/evaluate_export.py`` (evaluate
an export on a dataset with the project's evaluators)."""

import argparse
import logging
import os
from typing import Any, Dict, Optional, Sequence

from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.train.config_check import check_config
from panoptic_ext.apps.train.config_loading import get_panoptic_cfg
from panoptic_ext.apps.export.exporter import DEFAULT_OPSET, export_model
from panoptic_ext.apps.export.metadata import FORMATS, read_export_meta
from panoptic_ext.apps.export.runtime import ExportedPanopticModel

__all__ = ["export_main", "evaluate_main", "exported_cfg"]

logger = logging.getLogger(__name__)


def export_main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``tools/export_model.py``: export a trained model; returns export.json's contents."""
    parser = argparse.ArgumentParser(description="Export a panoptic_ext model (ONNX/TorchScript)")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", default=None, help="checkpoint (default MODEL.WEIGHTS)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    parser.add_argument("--output", required=True, metavar="DIR", help="export directory")
    parser.add_argument("--sample-image", default=None, help="image to trace with")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 16)")
    parser.add_argument(
        "--max-size", type=int, default=None, help="largest input side (INPUT.MAX_SIZE_TEST)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    setup_logger(name="panoptic_ext")
    cfg = get_panoptic_cfg(args.config_file, args.opts)
    if args.weights is not None:
        cfg.MODEL.WEIGHTS = args.weights
    cfg.freeze()
    check_config(cfg, datasets=False)
    return export_model(cfg, args.output, args.format, args.sample_image, args.opset, args.max_size)


def exported_cfg(model_dir: str, opts: Sequence[str] = ()):
    """The config saved beside an export (``config.yaml``), with ``KEY VALUE`` overrides."""
    read_export_meta(model_dir)
    return get_panoptic_cfg(os.path.join(model_dir, "config.yaml"), list(opts))


def evaluate_main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``tools/evaluate_export.py``: evaluate an export on its config's DATASETS.TEST (or
    ``--dataset``) with the evaluators ``train_net.py --eval-only`` uses; returns the results."""
    from panoptic_ext.apps.train.trainer import Trainer

    parser = argparse.ArgumentParser(description="Evaluate an exported panoptic_ext model")
    parser.add_argument("--model-dir", required=True, metavar="DIR", help="export directory")
    parser.add_argument("--dataset", nargs="+", default=None, help="registered dataset names")
    parser.add_argument("--output", default=None, help="evaluator files (default DIR/inference)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument("--providers", nargs="+", default=None, help="ONNX Runtime providers")
    parser.add_argument(
        "--compare-eager",
        action="store_true",
        help="also run the eager model (config.yaml's MODEL.WEIGHTS): both metrics and the "
        "panoptic pixel agreement of every image",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    setup_logger(name="panoptic_ext")
    setup_logger()
    if args.compare_eager:
        from panoptic_ext.apps.export.faithfulness import compare_with_eager

        return compare_with_eager(
            args.model_dir, args.dataset, args.output, args.threads, args.providers
        )
    cfg = exported_cfg(args.model_dir, args.opts)
    cfg.OUTPUT_DIR = args.output or os.path.join(args.model_dir, "inference")
    if args.dataset:
        cfg.DATASETS.TEST = tuple(args.dataset)
    cfg.freeze()
    model = ExportedPanopticModel(args.model_dir, args.providers, args.threads)
    logger.info("Evaluating %s on %s with %s", args.model_dir, cfg.DATASETS.TEST, model.providers)
    return Trainer.test(cfg, model)
