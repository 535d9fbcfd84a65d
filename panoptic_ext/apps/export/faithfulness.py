"""How faithful an export is: panoptic pixel agreement image by image with the eager model, and
both models' metrics from one pass over a dataset."""

import logging
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode

from panoptic_ext.apps.export.metadata import ExportError

__all__ = ["panoptic_agreement", "compare_with_eager"]

logger = logging.getLogger(__name__)


def _segment_labels(segments_info) -> Dict[int, tuple]:
    labels = {0: ("void",)}
    for s in segments_info:
        labels[int(s["id"])] = (bool(s["isthing"]), int(s["category_id"]))
    return labels


def panoptic_agreement(ours: Mapping[str, Any], reference: Mapping[str, Any]) -> float:
    """
    Fraction of pixels on which two panoptic outputs agree: both void, or in segments that are
    each other's best overlap (one-to-one) and have the same class and thing/stuff kind. Segment
    ids may be numbered differently; a thing split or merged differently does not agree.
    """
    (seg_a, info_a), (seg_b, info_b) = ours["panoptic_seg"], reference["panoptic_seg"]
    if tuple(seg_a.shape) != tuple(seg_b.shape):
        raise ValueError(f"panoptic maps of shapes {tuple(seg_a.shape)} and {tuple(seg_b.shape)}")
    a = torch.as_tensor(seg_a).cpu().numpy().astype(np.int64).ravel()
    b = torch.as_tensor(seg_b).cpu().numpy().astype(np.int64).ravel()
    n_b = int(b.max()) + 1
    counts = np.bincount(a * n_b + b, minlength=(int(a.max()) + 1) * n_b).reshape(-1, n_b)
    best_b, best_a = counts.argmax(axis=1), counts.argmax(axis=0)
    labels_a, labels_b = _segment_labels(info_a), _segment_labels(info_b)
    agreeing = 0
    for id_a in np.flatnonzero(counts.sum(axis=1)).tolist():
        id_b = int(best_b[id_a])
        if best_a[id_b] == id_a and labels_a.get(id_a) == labels_b.get(id_b):
            agreeing += int(counts[id_a, id_b])
    return agreeing / max(a.size, 1)


def compare_with_eager(
    model_dir: str,
    dataset_names: Optional[Sequence[str]] = None,
    output_dir: Optional[str] = None,
    num_threads: Optional[int] = None,
    providers: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """
    Run the export and the eager model it came from (``config.yaml`` and its ``MODEL.WEIGHTS``)
    on each test dataset in one pass, evaluate both with the project's evaluators and measure
    the panoptic pixel agreement of every image.

    Returns:
        dict per dataset: "export" and "eager" (evaluator results), "agreement"
        (min / mean over images, number of images, the worst image's file name) and
        "pq_difference" (export - eager, when both have a PQ).
    """
    from detectron2.evaluation import inference_context
    from detectron2.modeling import build_model

    from panoptic_ext.apps.export.commands import exported_cfg, refuse_random_weights
    from panoptic_ext.apps.export.runtime import ExportedPanopticModel
    from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer
    from panoptic_ext.apps.train.trainer import Trainer
    from panoptic_ext.modeling import optimize_for_cpu_inference

    refuse_random_weights(model_dir, "comparing it with the eager model")
    cfg = exported_cfg(model_dir)
    if not isinstance(cfg, CfgNode):
        raise ExportError(
            f"{model_dir} is an export of a Python config: --compare-eager handles exports of "
            "YAML configs; evaluate it without --compare-eager, and the eager model with "
            "train_net.py --eval-only"
        )
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = output_dir or os.path.join(model_dir, "inference")
    if dataset_names:
        cfg.DATASETS.TEST = tuple(dataset_names)
    cfg.freeze()
    eager = build_model(cfg).eval()
    PanopticCheckpointer(eager, allow_partial=cfg.RUN.ALLOW_PARTIAL_WEIGHTS).load(cfg.MODEL.WEIGHTS)
    optimize_for_cpu_inference(eager)
    exported = ExportedPanopticModel(model_dir, providers, num_threads)
    results: Dict[str, Any] = {}
    for name in cfg.DATASETS.TEST:
        loader = Trainer.build_test_loader(cfg, name)  # first: it may generate the dataset
        evaluators = {
            kind: Trainer.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, kind, name))
            for kind in ("export", "eager")
        }
        for evaluator in evaluators.values():
            evaluator.reset()
        agreements = []
        with inference_context(eager), torch.no_grad():
            for inputs in loader:
                outputs = {"export": exported(inputs), "eager": eager(inputs)}
                for kind, evaluator in evaluators.items():
                    evaluator.process(inputs, outputs[kind])
                for x, a, b in zip(inputs, outputs["export"], outputs["eager"]):
                    agreements.append((panoptic_agreement(a, b), x.get("file_name", "?")))
        worst = min(agreements)
        results[name] = {kind: ev.evaluate() for kind, ev in evaluators.items()}
        results[name]["agreement"] = {
            "min": worst[0],
            "mean": float(np.mean([v for v, _ in agreements])),
            "images": len(agreements),
            "worst_image": worst[1],
        }
        pq = {k: results[name][k].get("panoptic_seg", {}).get("PQ") for k in ("export", "eager")}
        if None not in pq.values():
            results[name]["pq_difference"] = pq["export"] - pq["eager"]
        logger.info(
            "%s: PQ export %s vs eager %s; pixel agreement %s",
            name,
            pq["export"],
            pq["eager"],
            results[name]["agreement"],
        )
    return results
