#!/usr/bin/env python
"""
Panoptic predictions of a trained model on images, with detectron2's ``DefaultPredictor``:

    python demo/demo.py --config-file configs/Synthetic-PanopticSegmentation/X.yaml \
        --input a.jpg more/images/ "shots/*.png" --output out/ \
        --opts MODEL.WEIGHTS output/main_job/model_final.pth

``--tta`` predicts with test-time augmentation (``TEST.AUG.MIN_SIZES / MAX_SIZE / FLIP``).

For each image ``<name>`` it writes to ``--output``: ``<name>_panoptic.png`` (the visualization),
``<name>_panoptic_ids.png`` (segment ids, RGB-encoded as COCO panoptic PNGs: id = R + 256 G +
256^2 B, 0 = void) and ``<name>_segments.json`` (the segments: id, class, score, area).
Directories and glob patterns give their image files (by extension); earlier outputs of the demo
in ``--output`` are not taken as inputs. An unreadable image is reported and skipped; the exit
status is then 1.

With ``--onnx DIR`` (a directory written by ``tools/export_model.py``) it runs the exported model
on ONNX Runtime (or TorchScript) with ``PanopticONNXPredictor`` and the config saved beside it;
``--config-file`` is then not needed.
"""

import argparse
import sys
from typing import List, Optional

from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.train import get_panoptic_cfg
from panoptic_ext.apps.predict import predict_images
from panoptic_ext.apps.train.config_check import check_test_aug_config


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="panoptic_ext demo: panoptic predictions")
    parser.add_argument("--config-file", metavar="FILE", help="model config")
    parser.add_argument("--onnx", metavar="DIR", help="run this exported model instead")
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files, directories or glob patterns"
    )
    parser.add_argument("--output", required=True, help="output directory")
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
        help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu",
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = parse_args(argv)
    setup_logger(name="panoptic_ext")
    logger = setup_logger()
    predictor = None
    if args.onnx:
        from panoptic_ext.apps.export import PanopticONNXPredictor
        from panoptic_ext.apps.export.commands import exported_cfg

        cfg = exported_cfg(args.onnx, args.opts)
        predictor = PanopticONNXPredictor(args.onnx)
    elif args.config_file:
        cfg = get_panoptic_cfg(
            args.config_file, args.opts + ["TEST.AUG.ENABLED", "True"] * args.tta
        )
        check_test_aug_config(cfg)
        if not cfg.MODEL.WEIGHTS:
            logger.warning("MODEL.WEIGHTS is empty: predicting with a randomly initialized model")
    else:
        raise SystemExit("demo.py needs --config-file (eager model) or --onnx DIR (an export)")
    cfg.freeze()
    failed: List[tuple] = []
    written = predict_images(cfg, args.input, args.output, predictor=predictor, failed=failed)
    logger.info("Wrote the predictions of %d images to %s", len(written), args.output)
    if failed:  # the others were predicted; the exit status still says something went wrong
        raise SystemExit(f"demo: {len(failed)} image(s) could not be read (see the log above)")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
