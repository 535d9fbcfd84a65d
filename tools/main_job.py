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
(``RUN.EXISTING_OUTPUT refuse|overwrite`` as an override changes that). ``--resume`` continues an
interrupted run: its training, or, when training had finished (e.g. interrupted during the final
evaluation), the final evaluation, metrics, curves and pictures from ``model_final.pth``.
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
import math
import time
from typing import Any, Dict, List, Optional

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from panoptic_ext.apps.predict import class_layout_for_cfg, predict_images, record_to_panoptic
from panoptic_ext.apps.train import Trainer, default_setup, get_panoptic_cfg, plot_training_curves
from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer
from panoptic_ext.apps.train.config_check import ConfigError, check_config
from panoptic_ext.apps.train.config_loading import save_config, whole_number_at_least
from panoptic_ext.apps.train.resume_config import read_saved_run
from panoptic_ext.apps.train.run_dir import prepare_output_dir

DEFAULT_CONFIG = "configs/Synthetic-PanopticSegmentation/panoptic_fpn_R_18_scratch_cpu.yaml"
logger = logging.getLogger("panoptic_ext.main_job")
_EXISTING_OUTPUT_KEY = "RUN.EXISTING_OUTPUT"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument(
        "--num-vis", type=whole_number_at_least(0), default=8, help="val images to visualize (>= 0)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT_DIR's last checkpoint"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


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


def _finished_training(cfg: CfgNode) -> bool:
    """Whether OUTPUT_DIR's last checkpoint is the end of this config's training (for
    ``--resume``: only the final evaluation and what follows it are left)."""
    if not os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return False
    path, iteration, _, _ = read_saved_run(cfg.OUTPUT_DIR)
    if iteration is None or iteration + 1 < cfg.SOLVER.MAX_ITER:
        return False
    if iteration + 1 > cfg.SOLVER.MAX_ITER:
        raise ConfigError(
            f"--resume: {path} has finished {iteration + 1} iterations, more than SOLVER.MAX_ITER "
            f"{cfg.SOLVER.MAX_ITER}: set SOLVER.MAX_ITER {iteration + 1} to finish that run (its "
            f"final evaluation), or above {iteration + 1} to train it longer"
        )
    return True


def main(argv: Optional[List[str]] = None) -> None:
    wall_start = time.perf_counter()
    args = parse_args(argv)
    try:
        cfg = get_panoptic_cfg(args.config_file, args.opts)
        if _EXISTING_OUTPUT_KEY not in args.opts[::2]:
            # Running `make train` again keeps the previous run, moved aside (with a log line).
            cfg.RUN.EXISTING_OUTPUT = "move"
        cfg.freeze()
        check_config(cfg)  # ranges, choices, class counts: before anything is written
        final_only = args.resume and _finished_training(cfg)
    except ConfigError as e:
        raise SystemExit(f"main_job: {e}") from e
    lock, messages = prepare_output_dir(cfg, resume=args.resume, eval_only=final_only)
    try:
        _run(cfg, args, wall_start, messages, final_only)
    finally:
        if lock is not None:
            lock.release()


def _final_evaluation(cfg: CfgNode) -> Dict[str, Any]:
    """Evaluate ``model_final.pth`` as the last step of training does, and log the results in
    ``metrics.json`` at the last iteration as that step would have."""
    model = Trainer.build_model(cfg)
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    PanopticCheckpointer(model, cfg.OUTPUT_DIR, require_complete=True).load(weights)
    results = Trainer.test(cfg, model.eval())
    scalars = {k: v for k, v in flatten_results_dict(results).items() if isinstance(v, float)}
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json"), "a") as f:
        f.write(json.dumps({**scalars, "iteration": cfg.SOLVER.MAX_ITER - 1}) + "\n")
    return results


def _logged_seconds_per_iter(metrics_file: str) -> float:
    """Mean of detectron2's logged step times (metrics.json "time"), NaN without any."""
    times = []
    if os.path.isfile(metrics_file):
        with open(metrics_file) as f:
            times = [json.loads(line).get("time") for line in f if line.strip()]
    times = [t for t in times if isinstance(t, (int, float))]
    return sum(times) / len(times) if times else math.nan


def _run(
    cfg: CfgNode,
    args: argparse.Namespace,
    wall_start: float,
    messages: List[str],
    final_only: bool = False,
) -> None:
    output_dir = cfg.OUTPUT_DIR
    load_start = os.getloadavg()
    # an earlier run's config.yaml stays until its checkpoint is accepted
    default_setup(cfg, args, save=not args.resume)
    for message in messages:
        logger.warning(message)

    dataset_seconds = _prepare_datasets(cfg)
    train_start = time.perf_counter()
    metrics_file = os.path.join(output_dir, "metrics.json")
    if final_only:
        logger.info("--resume: training is complete; evaluating model_final.pth")
        results = _final_evaluation(cfg)
        start_iter = cfg.SOLVER.MAX_ITER
        seconds_per_iter = _logged_seconds_per_iter(metrics_file)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        if args.resume:
            save_config(cfg)
        results = trainer.train()
        start_iter = trainer.start_iter
        # detectron2's IterationTimer: step times (data loading included, hooks excluded) after
        # its warm-up iterations; the logged ones for runs too short for that.
        step_times = trainer.storage.histories().get("time")
        seconds_per_iter = (
            step_times.global_avg() if step_times else _logged_seconds_per_iter(metrics_file)
        )
    train_seconds = time.perf_counter() - train_start
    if not results:
        raise RuntimeError("training ran no evaluation: is DATASETS.TEST empty?")
    metrics = _final_metrics(results)

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
        "start_iter": start_iter,
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
