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
"""

import argparse
import sys
from typing import List, Optional

from detectron2.utils.logger import setup_logger

from panoptic_ext.engine import get_panoptic_cfg, predict_images
from panoptic_ext.engine.config_check import check_test_aug_config


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="panoptic_ext demo: panoptic predictions")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
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
    cfg = get_panoptic_cfg(args.config_file, args.opts + ["TEST.AUG.ENABLED", "True"] * args.tta)
    check_test_aug_config(cfg)
    cfg.freeze()
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: predicting with a randomly initialized model")
    written = predict_images(cfg, args.input, args.output)
    logger.info("Wrote the predictions of %d images to %s", len(written), args.output)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
