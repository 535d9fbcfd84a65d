"""Curves of a training run from its ``metrics.json``, as one PNG (``make train`` writes it beside
its results; TensorBoard shows the same scalars interactively but writes no image)."""

import json
import logging
import os
from typing import Dict

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
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:  # a run killed mid-write: a truncated last line
                if line.strip():
                    logger.warning("%s:%d is not JSON (%s), skipped", metrics_file, line_no, e)
                continue
            by_iter.setdefault(int(record.pop("iteration")), {}).update(record)
    return dict(sorted(by_iter.items()))


def plot_training_curves(metrics_file: str, output_file: str) -> str:
    """
    Plot the losses (left, log scale if all positive) and the quality metrics PQ, PQ_th, PQ_st,
    mIoU (right) of a training run against the iteration, into the PNG ``output_file``
    (returned).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_metrics(metrics_file)
    keys = sorted({k for v in metrics.values() for k in v})
    fig, (ax_loss, ax_quality) = plt.subplots(1, 2, figsize=(13, 4.5))
    for key in keys:
        points = [(i, v[key]) for i, v in metrics.items() if key in v]
        if key == "total_loss" or key.startswith("loss_"):
            marker = "." if len(points) < 20 else None  # a lone point has no line to show
            width = 2.0 if key == "total_loss" else 1.0
            ax_loss.plot(*zip(*points), label=key, linewidth=width, marker=marker)
        elif key.rsplit("/", 1)[-1] in _QUALITY_METRICS:
            ax_quality.plot(*zip(*points), marker="o", label=key)
    # a learned loss weight's regularizer can be negative
    positive = all(min(line.get_ydata()) > 0 for line in ax_loss.lines)
    ax_loss.set_yscale("log" if positive else "linear")
    ax_loss.set_title("training losses")
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
