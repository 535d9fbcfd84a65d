#!/usr/bin/env python
"""
Panoptic predictions of a trained model on images, a video or a camera, with detectron2's demo's
options (``--input``, ``--video-input``, ``--webcam``, ``--output``, ``--confidence-threshold``,
``--opts``):

    python demo/demo.py --config-file configs/Synthetic-PanopticSegmentation/X.yaml \\
        --input a.jpg more/images/ "shots/*.png" --output out/ \\
        --opts MODEL.WEIGHTS output/main_job/model_final.pth
    python demo/demo.py --config-file X.yaml --video-input clip.mp4 --output out/ --opts ...

Images: for each image ``<name>`` it writes to ``--output`` ``<name>_panoptic.png`` (the
visualization), ``<name>_panoptic_ids.png`` (segment ids, RGB-encoded as COCO panoptic PNGs: id =
R + 256 G + 256^2 B, 0 = void) and ``<name>_segments.json`` (the segments: id, class, score,
area). Directories and glob patterns give their image files (by extension); earlier outputs of
the demo in ``--output`` are not taken as inputs. An image that cannot be read or predicted (e.g.
1x1000 pixels) is reported and skipped; the others are predicted, the failures are listed at the
end and the exit status is 1.

Video (``--video-input FILE``): the annotated video, at the input's frame rate and size, goes to
``--output`` (a directory: ``<dir>/<video name>.mkv``; or a ``.mkv`` / ``.mp4`` / ``.avi``
file), with a progress bar (frames per second, ETA). A truncated or corrupt video ends with a
message saying so (exit status 1); the frames done are in the output, which plays.
``--webcam`` reads camera 0 until ESC (or Ctrl-C).

Without ``--output`` the results are shown in a window (ESC quits), as detectron2's demo does;
where no display exists, the demo says so and suggests ``--output``.

``--config-file`` takes a YAML config (``--opts KEY VALUE ...``) or a Python config
(``--opts key=value ...``, e.g. ``train.init_checkpoint=model_final.pth``). ``--tta`` predicts
with test-time augmentation (``TEST.AUG.MIN_SIZES / MAX_SIZE / FLIP``; YAML configs).
``--onnx DIR`` (a directory written by ``tools/export_model.py``) runs the exported model on ONNX
Runtime (or TorchScript) with the config saved beside it; ``--config-file``, ``--opts`` and
``--tta`` are refused with it (the export's settings are fixed when exporting).
"""

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.predict import predict_images
from panoptic_ext.apps.predict.panoptic_visualization import visualization_metadata
from panoptic_ext.apps.predict.video import (
    VideoReadError,
    check_display,
    predict_video,
    predict_webcam,
    show_picture,
    video_output_path,
)

YAML_EXTENSIONS = (".yaml", ".yml")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="panoptic_ext demo: panoptic predictions")
    parser.add_argument(
        "--config-file", metavar="FILE", help="model config: .yaml (yacs) or .py (LazyConfig)"
    )
    parser.add_argument("--onnx", metavar="DIR", help="run this exported model instead")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, directories or glob patterns")
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="take frames from camera 0")
    parser.add_argument(
        "--output",
        help="output directory (images, videos) or video file; without it the results are "
        "shown in a window",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="minimum score of the instances shown (default: the config's "
        "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH)",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation (TEST.AUG.ENABLED True; sizes from TEST.AUG.MIN_SIZES / "
        "MAX_SIZE / FLIP)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides: KEY VALUE pairs for a YAML config (e.g. MODEL.WEIGHTS "
        "model_final.pth MODEL.DEVICE cpu), key=value for a Python config (e.g. "
        "train.init_checkpoint=model_final.pth)",
    )
    return parser.parse_args(argv)


def _check_threshold(value: Optional[float]) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"--confidence-threshold {value}: expected a score in [0, 1]")


def _onnx_predictor(args: argparse.Namespace, logger) -> Tuple[Any, Any]:
    """The exported model of ``--onnx`` and its saved config; refuses what it cannot honour."""
    if args.config_file:
        raise ValueError(
            f"--config-file {args.config_file} with --onnx {args.onnx}: an export runs with the "
            f"config saved beside it ({os.path.join(args.onnx, 'config.yaml')}); drop "
            "--config-file, or export again with this config (tools/export_model.py)"
        )
    if args.opts:
        raise ValueError(
            f"--opts {' '.join(args.opts)} with --onnx {args.onnx}: an export's settings are "
            "fixed when exporting; export again with these overrides (tools/export_model.py "
            "takes them), or run the eager model with --config-file"
        )
    if args.tta:
        raise ValueError(
            f"--tta with --onnx {args.onnx}: test-time augmentation needs the eager model (it "
            "predicts the masks of the boxes merged over all views, which the exported graph "
            "cannot); drop --tta, or use --config-file with the model's weights"
        )
    from panoptic_ext.apps.export import PanopticONNXPredictor
    from panoptic_ext.apps.export.commands import exported_cfg

    cfg = exported_cfg(args.onnx)
    predictor = PanopticONNXPredictor(args.onnx)
    threshold = args.confidence_threshold
    if threshold is not None:
        # The graph keeps detections scoring at least ROI_HEADS.SCORE_THRESH_TEST; the panoptic
        # fusion (on the host) then keeps those above its instance threshold.
        baked = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
        if threshold < baked:
            logger.warning(
                "--confidence-threshold %s is below the export's MODEL.ROI_HEADS."
                "SCORE_THRESH_TEST %s: detections scoring less were dropped inside the exported "
                "graph",
                threshold,
                baked,
            )
        predictor.model.postprocessor.instance_score_threshold = threshold
    return predictor, cfg


def _yaml_cfg(args: argparse.Namespace, logger):
    from panoptic_ext.apps.train import get_panoptic_cfg
    from panoptic_ext.apps.train.config_check import check_test_aug_config

    opts = list(args.opts)
    if args.tta:
        opts += ["TEST.AUG.ENABLED", "True"]
    if args.confidence_threshold is not None:  # as detectron2's demo
        threshold = str(args.confidence_threshold)
        opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", threshold]
        opts += ["MODEL.RETINANET.SCORE_THRESH_TEST", threshold]
        opts += ["MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", threshold]
    cfg = get_panoptic_cfg(args.config_file, opts)
    if args.tta:
        check_test_aug_config(cfg)
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: predicting with a randomly initialized model")
    cfg.freeze()
    return cfg


def _lazy_cfg(args: argparse.Namespace, logger):
    from omegaconf import OmegaConf

    from panoptic_ext.apps.train import load_lazy_config

    if args.tta:
        raise ValueError(
            f"--tta with the Python config {args.config_file}: test-time augmentation reads "
            "TEST.AUG of a YAML config; use the YAML twin of this config, or drop --tta"
        )
    bad = [o for o in args.opts if "=" not in o]
    if bad:
        raise ValueError(
            f"--opts {' '.join(args.opts)}: a Python config takes key=value overrides (e.g. "
            f"train.init_checkpoint=model_final.pth), got {bad[0]!r}"
        )
    cfg = load_lazy_config(args.config_file, args.opts)
    if args.confidence_threshold is not None:
        for key in (
            "model.roi_heads.box_predictor.test_score_thresh",
            "model.postprocessor.instance_score_threshold",
        ):
            if OmegaConf.select(cfg, key, default=None) is not None:
                OmegaConf.update(cfg, key, args.confidence_threshold)
    if not cfg.train.init_checkpoint:
        logger.warning(
            "train.init_checkpoint is empty: predicting with a randomly initialized model "
            "(give --opts train.init_checkpoint=model_final.pth)"
        )
    return cfg


def build_predictor(args: argparse.Namespace, logger) -> Tuple[Any, Any]:
    """(predictor, config) of the demo's model: an export, a YAML or a Python config."""
    _check_threshold(args.confidence_threshold)
    if args.onnx:
        return _onnx_predictor(args, logger)
    if not args.config_file:
        raise ValueError("demo.py needs --config-file (eager model) or --onnx DIR (an export)")
    if not os.path.isfile(args.config_file):
        raise FileNotFoundError(f"--config-file {args.config_file}: no such file")
    ext = os.path.splitext(args.config_file)[1].lower()
    if ext in YAML_EXTENSIONS:
        from panoptic_ext.apps.predict import PanopticPredictor

        cfg = _yaml_cfg(args, logger)
        return PanopticPredictor(cfg), cfg
    if ext == ".py":
        from panoptic_ext.apps.predict.predictor import LazyPanopticPredictor

        cfg = _lazy_cfg(args, logger)
        return LazyPanopticPredictor(cfg), cfg
    raise ValueError(
        f"--config-file {args.config_file}: expected a YAML config (.yaml, .yml) or a Python "
        "config (.py)"
    )


def main(argv: Optional[List[str]] = None) -> Any:
    args = parse_args(argv)
    setup_logger(name="panoptic_ext")
    logger = setup_logger()
    show = None
    try:
        if not args.output:
            check_display()  # before loading the model: no window, no point
            wait_ms = 0 if args.input else 1
            show = lambda title, picture: show_picture(title, picture, wait_ms)  # noqa: E731
        output_video = None
        if args.video_input and args.output:
            output_video = video_output_path(args.output, args.video_input)
        elif args.webcam and args.output:
            output_video = video_output_path(args.output, "webcam")
        predictor, cfg = build_predictor(args, logger)
    except (ValueError, OSError, RuntimeError) as e:
        raise SystemExit(f"demo.py: {e}") from None

    metadata = visualization_metadata(cfg)
    if args.video_input or args.webcam:
        try:
            if args.webcam:
                result: Dict[str, Any] = predict_webcam(predictor, metadata, output_video, show)
            else:
                result = predict_video(predictor, metadata, args.video_input, output_video, show)
        except (VideoReadError, RuntimeError, OSError) as e:
            raise SystemExit(f"demo.py: {e}") from None
        if output_video:
            logger.info("Wrote %d annotated frames to %s", result["frames"], output_video)
        return result

    failed: List[tuple] = []
    try:
        written = predict_images(
            cfg, args.input, args.output, predictor=predictor, failed=failed, show=show
        )
    except OSError as e:  # no image found, or none could be predicted
        raise SystemExit(f"demo.py: {e}") from None
    if args.output:
        logger.info("Wrote the predictions of %d images to %s", len(written), args.output)
    if failed:  # the others were predicted; the exit status still says something went wrong
        listed = "\n  ".join(f"{path}: {error}" for path, error in failed)
        raise SystemExit(
            f"demo.py: {len(failed)} image(s) of {len(failed) + len(written)} could not be read "
            f"or predicted:\n  {listed}"
        )
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
