"""``PanopticSemSegEvaluator``: semantic segmentation metrics against panoptic ground truth.

detectron2's ``SemSegEvaluator`` reads a semantic PNG per image (``sem_seg_file_name``); panoptic
datasets such as COCO panoptic (standard records) and the synthetic one have none. Here the
semantic labels are built from the panoptic PNG and its ``segments_info``, in one of two label
spaces of :class:`PanopticClassLayout`:

- "merged": 0 = all things, 1..S = stuff (Panoptic FPN's semantic branch, detectron2's layout);
- "all": 0..T-1 = thing classes, T..T+S-1 = stuff (e.g. Cityscapes' 19 train classes).

Crowd segments keep their class (as in detectron2's ``prepare_panoptic_fpn.py`` and Cityscapes'
``labelTrainIds``); VOID pixels and categories outside the layout are ignored.
"""

import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from panoptic_pq.panoptic_files import read_panoptic_png
from panoptic_pq.segment_matching import segment_index_map

from ..data.class_layout import PanopticClassLayout
from .panoptic_evaluation import load_panoptic_ground_truth

__all__ = ["PanopticSemSegEvaluator", "panoptic_to_semantic", "semantic_label_map"]

logger = logging.getLogger(__name__)

LABEL_SPACES = ("merged", "all")
PREDICTION_SOURCES = ("sem_seg", "panoptic_seg")


def semantic_label_map(layout: PanopticClassLayout, label_space: str) -> Dict[int, int]:
    """Dataset category id -> semantic label in ``label_space`` ("merged" or "all")."""
    if label_space not in LABEL_SPACES:
        raise ValueError(f"label_space must be one of {LABEL_SPACES}, got {label_space!r}")
    num_things = layout.num_thing_classes
    labels = {}
    for k, dataset_id in enumerate(layout.thing_dataset_ids):
        labels[dataset_id] = 0 if label_space == "merged" else k
    for j, dataset_id in enumerate(layout.stuff_dataset_ids):
        labels[dataset_id] = 1 + j if label_space == "merged" else num_things + j
    return labels


def panoptic_to_semantic(
    id_map: np.ndarray,
    segments_info: Sequence[Mapping[str, Any]],
    label_of_category: Mapping[int, int],
    ignore_label: int = 255,
) -> np.ndarray:
    """
    Semantic labels of a panoptic annotation.

    Args:
        id_map (ndarray): (H, W) segment ids (``rgb_to_id`` of the panoptic PNG), 0 = VOID.
        segments_info (list[dict]): segments with ``id`` and dataset ``category_id``.
        label_of_category (dict): dataset category id -> semantic label (others are ignored).
        ignore_label (int): label of VOID pixels and of unlisted segments.

    Returns:
        ndarray: (H, W) int64 labels.
    """
    ids = np.array([int(s["id"]) for s in segments_info], dtype=np.int64)
    table = np.full(len(ids) + 2, ignore_label, dtype=np.int64)
    for i, s in enumerate(segments_info):
        table[2 + i] = label_of_category.get(int(s["category_id"]), ignore_label)
    return table[segment_index_map(id_map, ids)]


class PanopticSemSegEvaluator(DatasetEvaluator):
    """
    mIoU, fwIoU, mACC, pACC and per-class IoU / ACC (detectron2's ``SemSegEvaluator`` metrics,
    in ``{"sem_seg": {...}}``) with ground truth from the dataset's panoptic annotations.

    Predictions come from ``outputs["sem_seg"]`` (argmax; "all"-layout logits are folded to the
    merged labels when ``label_space="merged"``) or from ``outputs["panoptic_seg"]`` (each
    segment's class; VOID pixels count as misses).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        label_space: str = "merged",
        prediction_source: str = "sem_seg",
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name (str): a dataset with ``panoptic_json`` / ``panoptic_root`` metadata.
            output_dir (str): if set, results are also written to ``sem_seg_results.json``.
            label_space (str): "merged" (S + 1 classes) or "all" (T + S classes).
            prediction_source (str): "sem_seg" or "panoptic_seg".
            distributed (bool): sum the confusion matrices of all ranks.
        """
        if prediction_source not in PREDICTION_SOURCES:
            raise ValueError(
                f"prediction_source must be one of {PREDICTION_SOURCES}, got {prediction_source!r}"
            )
        self._dataset_name = dataset_name
        metadata = MetadataCatalog.get(dataset_name)
        self._layout = PanopticClassLayout.from_metadata(metadata)
        self._label_of_category = semantic_label_map(self._layout, label_space)
        self._label_space = label_space
        self._source = prediction_source
        self._output_dir = output_dir
        self._distributed = distributed
        self._gt_root, gt_json = load_panoptic_ground_truth(metadata)
        self._gt_by_image = {str(ann["image_id"]): ann for ann in gt_json["annotations"]}
        if label_space == "merged":
            self._class_names = list(self._layout.merged_stuff_classes)
        else:
            self._class_names = list(self._layout.thing_names + self._layout.stuff_names)
        self._num_classes = len(self._class_names)
        self.reset()

    def reset(self):
        n = self._num_classes + 1  # the last row / column: no prediction / ignored gt
        self._conf_matrix = np.zeros((n, n), dtype=np.int64)

    # ---- predictions --------------------------------------------------------------------------
    def _from_sem_seg(self, logits) -> np.ndarray:
        num_things, num_stuff = self._layout.num_thing_classes, self._layout.num_stuff_classes
        pred = logits.argmax(dim=0).cpu().numpy().astype(np.int64)
        channels = logits.shape[0]
        if self._label_space == "merged":
            if channels == num_stuff + 1:
                return pred
            if channels == num_things + num_stuff:
                # "all" layout: fold the thing classes into the merged 'things' label 0.
                return np.where(pred < num_things, 0, pred - num_things + 1)
        elif channels == num_things + num_stuff:
            return pred
        raise ValueError(
            f"sem_seg has {channels} channels; the {self._label_space!r} labels of "
            f"{self._dataset_name!r} need {self._num_classes}"
            + (" (use prediction_source='panoptic_seg')" if self._label_space == "all" else "")
        )

    def _from_panoptic_seg(self, panoptic_seg) -> np.ndarray:
        panoptic_img, segments_info = panoptic_seg
        if segments_info is None:
            raise ValueError("PanopticSemSegEvaluator needs panoptic outputs with segments_info")
        pan = panoptic_img.cpu().numpy()
        ids = np.array([int(s["id"]) for s in segments_info], dtype=np.int64)
        table = np.full(len(ids) + 2, self._num_classes, dtype=np.int64)  # VOID: no prediction
        num_things = self._layout.num_thing_classes
        for i, s in enumerate(segments_info):
            isthing = bool(s.get("isthing", False))
            k = self._layout.model_label(isthing, int(s["category_id"]))
            if isthing:
                table[2 + i] = 0 if self._label_space == "merged" else k
            else:
                table[2 + i] = k if self._label_space == "merged" else num_things + k - 1
        return table[segment_index_map(pan.astype(np.int32, copy=False), ids)]

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            if self._source == "sem_seg":
                pred = self._from_sem_seg(output["sem_seg"])
            else:
                pred = self._from_panoptic_seg(output["panoptic_seg"])
            ann = self._gt_by_image.get(str(input["image_id"]))
            if ann is None:
                raise ValueError(
                    f"image_id {input['image_id']!r} of {self._dataset_name!r} is not in its "
                    "panoptic JSON"
                )
            gt_file = os.path.join(self._gt_root, ann["file_name"])
            gt = panoptic_to_semantic(
                read_panoptic_png(gt_file), ann["segments_info"], self._label_of_category, -1
            )
            if gt.shape != pred.shape:
                raise ValueError(
                    f"prediction of image {input['image_id']!r} has size {pred.shape}, its "
                    f"ground truth {gt_file} {gt.shape}"
                )
            gt[gt < 0] = self._num_classes
            n = self._num_classes + 1
            self._conf_matrix += np.bincount(
                n * pred.reshape(-1) + gt.reshape(-1), minlength=n * n
            ).reshape(n, n)

    # ---- evaluate -----------------------------------------------------------------------------
    def evaluate(self):
        conf = self._conf_matrix
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            matrices = comm.gather(conf, dst=0)
            if not comm.is_main_process():
                return None
            conf = sum(matrices[1:], matrices[0].copy())
        res = semantic_metrics(conf, self._class_names)
        logger.info("Semantic segmentation on %s: %s", self._dataset_name, res)
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "sem_seg_results.json"), "w") as f:
                json.dump(res, f, indent=2)
        return OrderedDict({"sem_seg": res})


def semantic_metrics(conf: np.ndarray, class_names: Sequence[str]) -> Dict[str, float]:
    """
    mIoU, fwIoU, per-class IoU, mACC, pACC, per-class ACC (in %) of a confusion matrix.

    Args:
        conf (ndarray): (N + 1, N + 1) pixel counts [prediction, ground truth]; index N is
            "no prediction" (rows) / ignored (columns).
        class_names (list[str]): the N class names.

    Pixels with an ignored label do not count; pixels without a prediction count as misses.
    Classes absent from the ground truth have NaN accuracy and IoU, and (as in detectron2) still
    lower mIoU through a 0 IoU when they are predicted.
    """
    n = len(class_names)
    tp = conf.diagonal()[:n].astype(np.float64)
    pos_gt = conf[:, :n].sum(axis=0).astype(np.float64)
    pos_pred = conf[:n, :n].sum(axis=1).astype(np.float64)
    union = pos_gt + pos_pred - tp
    has_gt, has_union = pos_gt > 0, union > 0
    acc = np.full(n, np.nan)
    iou = np.full(n, np.nan)
    acc[has_gt] = tp[has_gt] / pos_gt[has_gt]
    iou[has_gt] = tp[has_gt] / union[has_gt]
    total = pos_gt.sum()
    res: Dict[str, float] = {}
    res["mIoU"] = 100 * np.sum(iou[has_gt]) / max(1, np.sum(has_union))
    res["fwIoU"] = 100 * np.sum(iou[has_gt] * pos_gt[has_gt]) / max(1.0, total)
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * iou[i]
    res["mACC"] = 100 * np.sum(acc[has_gt]) / max(1, np.sum(has_gt))
    res["pACC"] = 100 * np.sum(tp) / max(1.0, total)
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * acc[i]
    return {k: float(v) for k, v in res.items()}
