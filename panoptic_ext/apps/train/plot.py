"""Curves of a training run from its ``metrics.json``: losses and PQ over iterations."""

import json
import logging
import os
from typing import Dict, List

__all__ = ["read_metrics", "plot_training_curves"]

logger = logging.getLogger(__name__)

# Evaluation results in metrics.json are flattened as "<task>/<metric>", e.g. "panoptic_seg/PQ".
_QUALITY_METRICS = ("PQ", "PQ_th", "PQ_st", "mIoU")


def read_metrics(metrics_file: str) -> Dict[int, Dict[str, float]]:
    """
    Read detectron2's ``metrics.json`` (one JSON object per line, appended to by resumed runs).

    Returns:
        dict[int, dict[str, float]]: iteration -> scalars; when a resumed run wrote an iteration
        again, its later values win.
    """
    by_iter: Dict[int, Dict[str, float]] = {}
    with open(metrics_file) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                # A run killed mid-write leaves a truncated last line.
                logger.warning("%s:%d is not JSON (%s), skipped", metrics_file, line_no, e)
                continue
            iteration = int(record.pop("iteration"))
            by_iter.setdefault(iteration, {}).update(record)
    return dict(sorted(by_iter.items()))


def _series(metrics: Dict[int, Dict[str, float]], key: str) -> List[tuple]:
    return [(i, v[key]) for i, v in metrics.items() if key in v]


def plot_training_curves(metrics_file: str, output_file: str) -> str:
    """
    Plot the losses (left, log scale) and the quality metrics PQ, PQ_th, PQ_st, mIoU (right)
    of a training run against the iteration, into a PNG.

    Args:
        metrics_file (str): detectron2's ``OUTPUT_DIR/metrics.json``.
        output_file (str): the PNG to write.

    Returns:
        str: ``output_file``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_metrics(metrics_file)
    keys = sorted({k for v in metrics.values() for k in v})
    loss_keys = [k for k in keys if k == "total_loss" or k.startswith("loss_")]
    quality_keys = [k for k in keys if k.rsplit("/", 1)[-1] in _QUALITY_METRICS]

    fig, (ax_loss, ax_quality) = plt.subplots(1, 2, figsize=(13, 4.5))
    positive = True
    for key in loss_keys:
        points = _series(metrics, key)
        positive = positive and min(v for _, v in points) > 0
        width = 2.0 if key == "total_loss" else 1.0
        marker = "." if len(points) < 20 else None  # a lone point has no line to show
        ax_loss.plot(*zip(*points), label=key, linewidth=width, marker=marker)
    # a learned loss weight's regularizer can be negative
    ax_loss.set_yscale("log" if positive else "linear")
    ax_loss.set_title("training losses")
    for key in quality_keys:
        points = _series(metrics, key)
        ax_quality.plot(*zip(*points), marker="o", label=key)
    ax_quality.set_title("validation quality")
    ax_quality.set_ylim(0, 100)
    for ax in (ax_loss, ax_quality):
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    fig.savefig(output_file, dpi=100)
    plt.close(fig)
    logger.info("Training curves written to %s", output_file)
    return output_file
