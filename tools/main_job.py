#!/usr/bin/env python
"""
The main job (``make train``): Panoptic FPN trained from scratch on the CPU on the synthetic
dataset, then evaluated.

1. generates the synthetic dataset if it is missing ($DETECTRON2_DATASETS, default ./datasets);
2. trains with panoptic_ext's Trainer (progress lines with an ETA; periodic evaluation);
3. evaluates on the val split and writes, in OUTPUT_DIR (default output/main_job):
   ``final_metrics.json``, ``training_curves.png`` (losses and PQ over iterations),
   ``visualizations/`` (predictions next to the ground truth on val images), plus detectron2's
   ``metrics.json``, TensorBoard events, ``log.txt`` and checkpoints;
4. prints one summary line, its last line of output:
   ``PQ=.. PQ_th=.. PQ_st=.. mIoU=.. wall=..s``.

``--eval-only MODEL.WEIGHTS output/main_job/model_final.pth`` of ``train_net.py`` with the same
config reproduces the final evaluation.

OUTPUT_DIR is locked while the job runs (a second one stops at once, naming the first). Without
``--resume``, a previous run found there is moved to ``OUTPUT_DIR.previous-<date>-<time>``
(``RUN.EXISTING_OUTPUT refuse|overwrite`` as an override changes that).
"""

# ruff: noqa: E402  (imports after setting OMP_WAIT_POLICY)
import os

# OpenMP threads that spin while waiting make torch 5-10x slower as soon as another process
# wants the CPU (measured on the 2-core machine: 11 s instead of 1.3 s per iteration); sleeping
# waits cost little when the machine is idle. It must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import logging
import time
from typing import Any, Dict, List

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from panoptic_ext.apps.train import ProgressHook, Trainer, default_setup, get_panoptic_cfg, plot_training_curves
from panoptic_ext.apps.predict import class_layout_for_cfg, predict_images, record_to_panoptic
from panoptic_ext.apps.train.run_dir import prepare_output_dir

DEFAULT_CONFIG = "configs/Synthetic-PanopticSegmentation/panoptic_fpn_R_18_scratch_cpu.yaml"
logger = logging.getLogger("panoptic_ext.main_job")
_EXISTING_OUTPUT_KEY = "RUN.EXISTING_OUTPUT"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument("--num-vis", type=int, default=8, help="val images to visualize")
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT_DIR's last checkpoint"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args()


def _prepare_datasets(cfg: CfgNode) -> float:
    """Load (and on first use generate) the datasets; returns the seconds it took."""
    start = time.perf_counter()
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        logger.info("Dataset %s: %d images", name, len(DatasetCatalog.get(name)))
    return time.perf_counter() - start


def _visualize_val(cfg: CfgNode, weights: str, num: int, output_dir: str) -> List[str]:
    """Predictions (``predict_images`` outputs) and ``<name>_pred_vs_gt.png`` composites."""
    dataset_name = cfg.DATASETS.TEST[0]
    records = DatasetCatalog.get(dataset_name)[:num]
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    written = predict_images(cfg, [r["file_name"] for r in records], output_dir)
    layout = class_layout_for_cfg(cfg)
    metadata = MetadataCatalog.get(dataset_name)  # the outputs speak its label space
    composites = []
    for record, outputs in zip(records, written):
        image = read_image(record["file_name"], format="RGB")
        gt = Visualizer(image, metadata).draw_panoptic_seg(*record_to_panoptic(record, layout))
        pred = np.asarray(Image.open(outputs["visualization"]).convert("RGB"))
        path = outputs["visualization"].replace("_panoptic.png", "_pred_vs_gt.png")
        Image.fromarray(np.concatenate([pred, gt.get_image()], axis=1)).save(path)
        composites.append(path)
    return composites


def _final_metrics(results: Dict[str, Any]) -> Dict[str, float]:
    panoptic = results.get("panoptic_seg", {})
    metrics = {k: float(v) for k, v in panoptic.items()}
    if "sem_seg" in results and "mIoU" in results["sem_seg"]:
        metrics["mIoU"] = float(results["sem_seg"]["mIoU"])
    for key in ("PQ", "PQ_th", "PQ_st"):
        if key not in metrics:
            raise KeyError(f"the evaluation results have no panoptic_seg/{key}: {results}")
    return metrics


def main() -> None:
    wall_start = time.perf_counter()
    args = parse_args()
    cfg = get_panoptic_cfg(args.config_file, args.opts)
    if _EXISTING_OUTPUT_KEY not in args.opts[::2]:
        # Running `make train` again keeps the previous run, moved aside (with a log line).
        cfg.RUN.EXISTING_OUTPUT = "move"
    cfg.freeze()
    lock, messages = prepare_output_dir(cfg, resume=args.resume)
    try:
        _run(cfg, args, wall_start, messages)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: CfgNode, args: argparse.Namespace, wall_start: float, messages: List[str]) -> None:
    output_dir = cfg.OUTPUT_DIR
    load_start = os.getloadavg()
    default_setup(cfg, args)
    for message in messages:
        logger.warning(message)

    dataset_seconds = _prepare_datasets(cfg)
    trainer = Trainer(cfg)
    progress = ProgressHook(period=20.0)
    trainer.register_hooks([progress])
    trainer.resume_or_load(resume=args.resume)
    train_start = time.perf_counter()
    results = trainer.train()
    train_seconds = time.perf_counter() - train_start
    if not results:
        raise RuntimeError("training ran no evaluation: is DATASETS.TEST empty?")
    metrics = _final_metrics(results)
    # detectron2's IterationTimer: step times (data loading included, hooks excluded) after
    # its warm-up iterations; the progress hook's median for runs too short for that.
    step_times = trainer.storage.histories().get("time")
    seconds_per_iter = step_times.global_avg() if step_times else progress.seconds_per_iter

    curves = plot_training_curves(
        os.path.join(output_dir, "metrics.json"), os.path.join(output_dir, "training_curves.png")
    )
    weights = os.path.join(output_dir, "model_final.pth")
    vis = _visualize_val(cfg, weights, args.num_vis, os.path.join(output_dir, "visualizations"))

    wall = time.perf_counter() - wall_start
    summary = {
        **metrics,
        "wall_time_s": round(wall, 1),
        "dataset_time_s": round(dataset_seconds, 1),
        "train_and_eval_time_s": round(train_seconds, 1),
        "seconds_per_iter": round(seconds_per_iter, 3),
        "iterations": cfg.SOLVER.MAX_ITER,
        "start_iter": trainer.start_iter,
        "config_file": args.config_file,
        "opts": args.opts,
        "weights": weights,
        "training_curves": curves,
        "visualizations": vis,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    with open(os.path.join(output_dir, "final_metrics.json"), "w") as f:
        json.dump(summary, f, indent=1)
    logger.info("Final metrics written to %s", os.path.join(output_dir, "final_metrics.json"))
    print(
        f"PQ={metrics['PQ']:.1f} PQ_th={metrics['PQ_th']:.1f} PQ_st={metrics['PQ_st']:.1f} "
        f"mIoU={metrics.get('mIoU', float('nan')):.1f} wall={wall:.0f}s",
        flush=True,
    )


if __name__ == "__main__":
    main()
