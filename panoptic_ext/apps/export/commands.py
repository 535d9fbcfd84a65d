"""Command lines of ``tools/export_model.py`` (export) and ``tools/evaluate_export.py`` (evaluate
an export on a dataset with the project's evaluators)."""

import argparse
import logging
import os
from typing import Any, Dict, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.export.exporter import DEFAULT_OPSET, export_model
from panoptic_ext.apps.export.metadata import EXPORT_FILE, FORMATS, ExportError, read_export_meta
from panoptic_ext.apps.export.runtime import ExportedPanopticModel
from panoptic_ext.apps.export.sources import load_export_config

__all__ = ["export_main", "evaluate_main", "exported_cfg", "refuse_random_weights"]

logger = logging.getLogger(__name__)


def export_main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``tools/export_model.py``: export a trained model; returns export.json's contents."""
    parser = argparse.ArgumentParser(description="Export a panoptic_ext model (ONNX/TorchScript)")
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="YAML config, or Python config (.py)"
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="checkpoint (default MODEL.WEIGHTS, or train.init_checkpoint of a Python config)",
    )
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="export even without weights (a random model, for smoke tests; marked as such)",
    )
    parser.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    parser.add_argument("--output", required=True, metavar="DIR", help="export directory")
    parser.add_argument("--sample-image", default=None, help="image to trace with")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 16)")
    parser.add_argument(
        "--max-size", type=int, default=None, help="largest input side (INPUT.MAX_SIZE_TEST)"
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "int8", "bf16"],
        default="fp32",
        help="opt-in reduced precision (ONNX only): int8 convolutions calibrated on "
        "--calibration-images; refused where the CPU lacks support",
    )
    parser.add_argument(
        "--calibration-images",
        nargs="+",
        default=None,
        metavar="FILE",
        help="images for int8 calibration (default: the sample image)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides: KEY VALUE (YAML config) or key=value (Python config)",
    )
    args = parser.parse_args(argv)
    setup_logger(name="panoptic_ext")
    if args.precision != "fp32":
        from panoptic_ext.apps.export.quantize import check_cpu_support

        check_cpu_support(args.precision)  # before any work
        if args.format != "onnx":
            raise ExportError(f"--precision {args.precision} needs --format onnx")
    cfg = load_export_config(args.config_file, args.opts)
    if isinstance(cfg, CfgNode):
        from panoptic_ext.apps.train.config_check import check_config

        if args.weights is not None:
            cfg.MODEL.WEIGHTS = args.weights
        cfg.freeze()
        check_config(cfg, datasets=False)
    elif args.weights is not None:
        cfg.train.init_checkpoint = args.weights
    if args.precision == "fp32":
        return export_model(
            cfg,
            args.output,
            args.format,
            args.sample_image,
            args.opset,
            args.max_size,
            allow_random_weights=args.allow_random_weights,
        )
    return _export_reduced(cfg, args)


def _export_reduced(cfg, args) -> Dict[str, Any]:
    """The float32 export in a temporary folder, then its reduced-precision copy in --output."""
    import shutil
    import tempfile

    from panoptic_ext.apps.export.quantize import calibration_inputs, quantize_export

    parent = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(parent, exist_ok=True)
    fp32_dir = tempfile.mkdtemp(prefix=".fp32-", dir=parent)
    try:
        meta = export_model(
            cfg,
            os.path.join(fp32_dir, "export"),
            "onnx",
            args.sample_image,
            args.opset,
            args.max_size,
            allow_random_weights=args.allow_random_weights,
        )
        files = args.calibration_images or ([args.sample_image] if args.sample_image else [])
        images = calibration_inputs(meta, files)
        return quantize_export(
            os.path.join(fp32_dir, "export"), args.output, images, args.precision
        )
    finally:
        shutil.rmtree(fp32_dir, ignore_errors=True)


def exported_cfg(model_dir: str, opts: Sequence[str] = ()):
    """
    The config saved beside an export (``config.yaml``) with overrides: a CfgNode (``KEY
    VALUE`` overrides) for an export of a YAML config, a LazyConfig DictConfig (``key=value``)
    for an export of a Python config (export.json ``config.language`` says which).
    """
    meta = read_export_meta(model_dir)
    path = os.path.join(model_dir, meta["config"]["file"])
    if meta["config"]["language"] == "python":
        from panoptic_ext.apps.train.lazy_config import load_lazy_config

        return load_lazy_config(path, list(opts))
    from panoptic_ext.apps.train.config_loading import get_panoptic_cfg

    return get_panoptic_cfg(path, list(opts))


def refuse_random_weights(model_dir: str, what: str) -> None:
    """Raise :class:`ExportError` if the export holds a randomly initialized model."""
    if read_export_meta(model_dir).get("random_weights"):
        raise ExportError(
            f"{os.path.join(model_dir, EXPORT_FILE)}: the export holds a randomly initialized "
            f"model (exported with --allow-random-weights); {what} would mean nothing. Export "
            "the trained weights (--weights FILE)"
        )


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

        refuse_random_weights(args.model_dir, "comparing it with the eager model")
        return compare_with_eager(
            args.model_dir, args.dataset, args.output, args.threads, args.providers
        )
    cfg = exported_cfg(args.model_dir, args.opts)
    output_dir = args.output or os.path.join(args.model_dir, "inference")
    model = ExportedPanopticModel(args.model_dir, args.providers, args.threads)
    if not isinstance(cfg, CfgNode):
        return _evaluate_lazy(cfg, model, args.dataset, output_dir)
    cfg.OUTPUT_DIR = output_dir
    if args.dataset:
        cfg.DATASETS.TEST = tuple(args.dataset)
    cfg.freeze()
    logger.info("Evaluating %s on %s with %s", args.model_dir, cfg.DATASETS.TEST, model.providers)
    return Trainer.test(cfg, model)


def _evaluate_lazy(cfg, model, datasets: Optional[Sequence[str]], output_dir: str):
    """An export of a Python config on its ``dataloader.test`` (or each of ``datasets``)."""
    from panoptic_ext.apps.train import LazyTrainer

    cfg.train.output_dir = output_dir
    if not datasets:
        logger.info("Evaluating %s with %s", cfg.dataloader.test.dataset.names, model.providers)
        return LazyTrainer.test(cfg, model)
    results = {}
    for name in datasets:
        cfg.dataloader.test.dataset.names = name
        logger.info("Evaluating %s with %s", name, model.providers)
        results[name] = LazyTrainer.test(cfg, model)
    return results
