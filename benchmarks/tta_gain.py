"""
What test-time augmentation gains: PQ, PQ_th, PQ_st, mIoU and seconds per image of a trained
model on its test set, without TTA and with each augmentation set, in one run.

    python benchmarks/tta_gain.py --weights output/main_job/model_final.pth \
        [--config-file configs/Synthetic-PanopticSegmentation/panoptic_fpn_R_18_scratch_cpu.yaml] \
        [--sets "flip=256:F" "scales+flip=224,256,288:F" ...] [--output tta_gain.json]

A set is ``NAME=MIN_SIZES[:F]`` (``F``: with horizontal flips); MAX_SIZE is the largest min size
times the config's INPUT.MAX_SIZE_TEST / MIN_SIZE_TEST. Seconds per image are the model's calls
alone (no data loading, no evaluation), measured on the images in the same order for every row.
"""

import argparse
import json
import logging
import os
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode

from panoptic_ext.apps.train import Trainer, get_panoptic_cfg
from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer
from panoptic_ext.modeling import PanopticFPNWithTTA, optimize_for_cpu_inference

logger = logging.getLogger("benchmarks.tta_gain")
DEFAULT_CONFIG = "configs/Synthetic-PanopticSegmentation/panoptic_fpn_R_18_scratch_cpu.yaml"
DEFAULT_SETS = (
    "flip=256:F",
    "scales=224,256,288",
    "down+flip=224,256:F",
    "scales+flip=224,256,288:F",
    "up+flip=256,320:F",
    "wide+flip=192,256,320:F",
)


def parse_set(text: str) -> Tuple[str, Tuple[int, ...], bool]:
    """``NAME=MIN_SIZES[:F]`` -> (name, min sizes, flip)."""
    name, _, spec = text.partition("=")
    sizes, _, flip = spec.partition(":")
    if not name or not sizes or flip not in ("", "F"):
        raise ValueError(f"augmentation set {text!r} is not NAME=SIZE[,SIZE...][:F]")
    return name, tuple(int(s) for s in sizes.split(",")), flip == "F"


def evaluate(cfg: CfgNode, model, dataset: str) -> Dict[str, float]:
    """PQ / PQ_th / PQ_st / mIoU of ``model`` on ``dataset``, and its seconds per image."""
    loader = Trainer.build_test_loader(cfg, dataset)
    with tempfile.TemporaryDirectory() as tmp:
        evaluator = Trainer.build_evaluator(cfg, dataset, output_folder=tmp)
        evaluator.reset()
        seconds, images = 0.0, 0
        with torch.no_grad():
            for inputs in loader:
                start = time.perf_counter()
                outputs = model(inputs)
                seconds += time.perf_counter() - start
                images += len(inputs)
                evaluator.process(inputs, outputs)
        results = evaluator.evaluate()
    pq = results["panoptic_seg"]
    return {
        "PQ": pq["PQ"],
        "PQ_th": pq["PQ_th"],
        "PQ_st": pq["PQ_st"],
        "mIoU": results["sem_seg"]["mIoU"],
        "s_per_image": seconds / images,
    }


def run(
    config_file: str, weights: str, sets: Sequence[str], opts: Sequence[str] = ()
) -> List[dict]:
    """One row per augmentation set (the first without TTA)."""
    cfg = get_panoptic_cfg(config_file, list(opts))
    cfg.MODEL.WEIGHTS = weights
    cfg.TEST.EVAL_TASKS = ["panoptic_seg", "sem_seg"]
    model = Trainer.build_model(cfg)
    PanopticCheckpointer(model, require_complete=True).load(weights)
    model.eval()
    if next(model.parameters()).device.type == "cpu":
        optimize_for_cpu_inference(model)
    dataset = cfg.DATASETS.TEST[0]
    rows = [dict(name="no TTA", min_sizes=None, flip=False, **evaluate(cfg, model, dataset))]
    ratio = cfg.INPUT.MAX_SIZE_TEST / cfg.INPUT.MIN_SIZE_TEST
    for text in sets:
        name, sizes, flip = parse_set(text)
        aug = cfg.clone()
        aug.TEST.AUG.MIN_SIZES, aug.TEST.AUG.FLIP = sizes, flip
        aug.TEST.AUG.MAX_SIZE = int(round(max(sizes) * ratio))
        metrics = evaluate(aug, PanopticFPNWithTTA(aug, model), dataset)
        rows.append(dict(name=name, min_sizes=list(sizes), flip=flip, **metrics))
        logger.info("%s: %s", name, rows[-1])
    return rows


def to_markdown(rows: List[dict]) -> str:
    lines = [
        "| TTA | MIN_SIZES | FLIP | PQ | PQ_th | PQ_st | mIoU | s/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sizes = "-" if r["min_sizes"] is None else ", ".join(map(str, r["min_sizes"]))
        lines.append(
            f"| {r['name']} | {sizes} | {r['flip']} | {r['PQ']:.2f} | {r['PQ_th']:.2f} | "
            f"{r['PQ_st']:.2f} | {r['mIoU']:.2f} | {r['s_per_image']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--sets", nargs="*", default=list(DEFAULT_SETS))
    parser.add_argument("--output", help="also write the rows as JSON here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    rows = run(args.config_file, args.weights, args.sets, args.opts)
    print(to_markdown(rows))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
