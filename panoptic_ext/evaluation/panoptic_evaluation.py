"""``PanopticQualityEvaluator``: PQ / SQ / RQ of a model's ``panoptic_seg`` outputs, no panopticapi.

Each image is matched against its ground truth as soon as it is processed (the statistics are a
few numbers per category), so nothing large is kept in memory. With ``output_dir``, the
predicted ``segments_info`` are written as ``predictions.json`` (as detectron2 does); the PNGs
only with ``save_pngs=True``.
"""

import itertools
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import cv2
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from panoptic_pq.json_checks import categories_by_id, load_panoptic_json_file
from panoptic_pq.panoptic_files import format_pq_table, pq_image_of_files
from panoptic_pq.segment_matching import PQStat

from ..data.class_layout import PanopticClassLayout
from ..data.panoptic_ids import id_to_rgb

__all__ = ["PanopticQualityEvaluator", "load_panoptic_ground_truth"]

logger = logging.getLogger(__name__)


def load_panoptic_ground_truth(metadata: Any) -> Tuple[str, Dict[str, Any]]:
    """
    (panoptic_root, COCO panoptic JSON) of a dataset, from its metadata's ``panoptic_root`` and
    ``panoptic_json`` (set by detectron2's and panoptic_ext's registration functions).
    """
    name = getattr(metadata, "name", "?")
    for key in ("panoptic_json", "panoptic_root"):
        if not metadata.get(key):
            raise ValueError(
                f"dataset {name!r} has no metadata {key!r}: panoptic evaluation needs the COCO "
                "panoptic ground truth (JSON + PNG folder)"
            )
    json_file = PathManager.get_local_path(metadata.panoptic_json)
    gt_json = load_panoptic_json_file(json_file, "ground-truth")  # also: one annotation per image
    return PathManager.get_local_path(metadata.panoptic_root), gt_json


def _prediction_png_name(gt_ann: Mapping[str, Any]) -> str:
    """The predicted PNG's name: the gt PNG's path relative to its folder (sub-folders kept, so
    that ``s1/x.png`` and ``s2/x.png`` do not overwrite each other), or the image id when that
    path would leave the output folder."""
    name = os.path.normpath(os.path.splitext(gt_ann["file_name"])[0] + ".png")
    if os.path.isabs(name) or name.split(os.sep)[0] == os.pardir:
        name = f"{gt_ann['image_id']}.png"
    return name


class PanopticQualityEvaluator(DatasetEvaluator):
    """
    Panoptic quality (PQ, SQ, RQ for all / things / stuff and per category) of
    ``outputs["panoptic_seg"]``, with the numbers of panopticapi's ``pq_compute``.

    Predicted segments follow detectron2's convention (``isthing`` True: ``category_id`` is the
    instance class; False: the merged semantic label 1..S) and are mapped to dataset ids with
    :class:`PanopticClassLayout`. Segments without ``isthing`` already carry dataset ids;
    ``segments_info=None`` means detectron2's ``category * label_divisor + instance`` encoding.

    Works in distributed evaluation (call on every rank; results on the main process).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        distributed: bool = True,
        per_class: bool = True,
        save_pngs: bool = False,
    ):
        """
        Args:
            dataset_name (str): a registered dataset with ``panoptic_json`` / ``panoptic_root``
                and thing / stuff metadata.
            output_dir (str): if set, the predicted ``segments_info`` are saved there as
                ``predictions.json`` (COCO panoptic format, as detectron2's
                ``COCOPanopticEvaluator`` keeps them) with the full results in
                ``pq_results.json``.
            save_pngs (bool): also save the predicted PNGs (``output_dir/predictions/*.png``),
                so that ``pq_compute`` / ``panoptic-pq`` can re-score the predictions. Off by
                default: encoding and writing a PNG per image adds about 10 ms per image to
                every (periodic) evaluation.
            distributed (bool): gather the statistics of all ranks.
            per_class (bool): add "PQ-<name>", "SQ-<name>", "RQ-<name>" entries (NaN for
                categories without ground truth or predictions).
        """
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._layout = PanopticClassLayout.from_metadata(self._metadata)
        self._gt_root, gt_json = load_panoptic_ground_truth(self._metadata)
        self._categories = categories_by_id(
            gt_json["categories"], f"panoptic JSON {self._metadata.panoptic_json}"
        )
        self._gt_by_image = {ann["image_id"]: ann for ann in gt_json["annotations"]}
        self._gt_by_name = {str(ann["image_id"]): ann for ann in gt_json["annotations"]}
        self._output_dir = output_dir
        self._save_pngs = save_pngs
        self._category_ids = list(self._categories)
        self._distributed = distributed
        self._per_class = per_class
        # Record ids -> dataset ids, for outputs without segments_info (e.g. Panoptic-DeepLab's).
        self._record_to_dataset = dict(
            zip(
                self._layout.thing_record_ids + self._layout.stuff_record_ids,
                self._layout.thing_dataset_ids + self._layout.stuff_dataset_ids,
            )
        )
        self.reset()

    def reset(self):
        self._stat = PQStat(list(self._categories))
        self._predictions: List[Dict[str, Any]] = []

    # ---- process ------------------------------------------------------------------------------
    def _ground_truth(self, image_id: Any) -> Mapping[str, Any]:
        ann = self._gt_by_image.get(image_id) or self._gt_by_name.get(str(image_id))
        if ann is None:
            raise ValueError(
                f"image_id {image_id!r} of dataset {self._dataset_name!r} is not in its panoptic "
                f"JSON {self._metadata.panoptic_json}"
            )
        return ann

    def _convert_segments(
        self, panoptic_img: np.ndarray, segments_info: Optional[List[Dict[str, Any]]]
    ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
        """Model output -> (id map with 0 = VOID, segments with dataset category ids)."""
        if segments_info is None:
            # detectron2's encoding: category * label_divisor + instance, -1 = VOID.
            divisor = self._metadata.label_divisor
            segments = []
            for label in np.unique(panoptic_img):
                if label < 0:
                    continue
                record_id = int(label) // divisor
                if record_id not in self._record_to_dataset:
                    raise ValueError(f"panoptic label {label}: unknown category {record_id}")
                segments.append(
                    {"id": int(label) + 1, "category_id": self._record_to_dataset[record_id]}
                )
            return panoptic_img.astype(np.int32) + 1, segments
        segments = []
        for seg in segments_info:
            seg = dict(seg)
            isthing = seg.pop("isthing", None)
            if isthing is not None:
                seg["category_id"] = self._layout.dataset_id(bool(isthing), seg["category_id"])
            segments.append({"id": int(seg["id"]), "category_id": int(seg["category_id"])})
        return panoptic_img.astype(np.int32, copy=False), segments

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            panoptic_img, segments_info = output["panoptic_seg"]
            pan, segments = self._convert_segments(panoptic_img.cpu().numpy(), segments_info)
            # Post-processors may list segments that lost all their pixels: drop them, as a
            # segment without pixels cannot be written to a PNG either.
            if segments and 0 <= pan.min() and pan.max() < 1 << 24:
                area = np.bincount(pan.ravel(), minlength=max(s["id"] for s in segments) + 1)
                segments = [s for s in segments if area[s["id"]] > 0]
            gt_ann = self._ground_truth(input["image_id"])
            gt_file = os.path.join(self._gt_root, gt_ann["file_name"])
            self._stat += pq_image_of_files(
                gt_file,
                gt_ann["segments_info"],
                pan,
                segments,
                self._category_ids,
                image=f"image {input['image_id']!r} ({input.get('file_name', '')}, gt {gt_file})",
            )
            if self._output_dir:
                file_name = _prediction_png_name(gt_ann)
                prediction = {
                    "image_id": gt_ann["image_id"],
                    "file_name": file_name,
                    "segments_info": segments,
                }
                if self._save_pngs:
                    # Encoded now (a few KB each) so that only small strings are gathered.
                    ok, png = cv2.imencode(".png", np.ascontiguousarray(id_to_rgb(pan)[..., ::-1]))
                    if not ok:
                        raise RuntimeError(f"could not encode the panoptic PNG of {file_name}")
                    prediction["png_string"] = png.tobytes()
                self._predictions.append(prediction)

    # ---- evaluate -----------------------------------------------------------------------------
    def evaluate(self):
        stat, predictions = self._stat, self._predictions
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            stats = comm.gather(stat, dst=0)
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return None
            stat = PQStat(list(self._categories))
            for s in stats:
                stat += s
        if int(stat.tp.sum() + stat.fp.sum() + stat.fn.sum()) == 0:
            logger.warning(
                f"[PanopticQualityEvaluator] no segments to evaluate on {self._dataset_name}"
            )
        pq_res = stat.results(self._categories)
        logger.info(
            "Panoptic evaluation on %s:\n%s",
            self._dataset_name,
            format_pq_table(pq_res, self._categories, per_class=True),
        )
        if self._output_dir:
            self._save(predictions, pq_res)
        return OrderedDict({"panoptic_seg": self._summary(pq_res, stat)})

    def _summary(self, pq_res: Mapping[str, Any], stat: PQStat) -> Dict[str, float]:
        res: Dict[str, float] = {}
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for metric in ("pq", "sq", "rq"):
                value = 100 * pq_res[group][metric] if pq_res[group]["n"] else math.nan
                res[metric.upper() + suffix] = value
        if self._per_class:
            row = {c: i for i, c in enumerate(stat.category_ids)}
            counted = stat.tp + stat.fp + stat.fn
            for cat_id, values in pq_res["per_class"].items():
                name = self._categories[cat_id].get("name", str(cat_id))
                for metric in ("pq", "sq", "rq"):
                    res[f"{metric.upper()}-{name}"] = (
                        100 * values[metric] if counted[row[cat_id]] else math.nan
                    )
        return res

    def _save(self, predictions: List[Dict[str, Any]], pq_res: Mapping[str, Any]) -> None:
        PathManager.mkdirs(self._output_dir)
        png_dir = os.path.join(self._output_dir, "predictions")
        annotations = []
        for p in predictions:
            if self._save_pngs:
                path = os.path.join(png_dir, p["file_name"])
                PathManager.mkdirs(os.path.dirname(path))
                with PathManager.open(path, "wb") as f:
                    f.write(p["png_string"])
            annotations.append({k: v for k, v in p.items() if k != "png_string"})
        with PathManager.open(os.path.join(self._output_dir, "predictions.json"), "w") as f:
            json.dump(
                {"annotations": annotations, "categories": list(self._categories.values())}, f
            )
        with PathManager.open(os.path.join(self._output_dir, "pq_results.json"), "w") as f:
            json.dump(pq_res, f, indent=2)
        logger.info(f"Saved panoptic predictions and PQ results to {self._output_dir}")
