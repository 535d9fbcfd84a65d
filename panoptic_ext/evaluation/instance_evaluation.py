"""Instance AP (COCO bbox / segm) of a panoptic model's ``instances`` on a panoptic dataset.

detectron2's ``COCOEvaluator`` needs an instances JSON (``metadata.json_file``) and maps the
predicted class ``k`` back through ``metadata.thing_dataset_id_to_contiguous_id``. On panoptic
datasets neither fits as is: Cityscapes and custom panoptic datasets have no instances JSON, and
the contiguous ids of detectron2's panoptic metadata are not the instance classes (Cityscapes
things are train ids 11..18, COCO "standard" names 133 classes in ``thing_classes``).
:class:`PanopticInstanceEvaluator` therefore gives ``COCOEvaluator`` a metadata entry of its own,
with ``{dataset id: instance class}`` and an instances JSON that is either the dataset's or
derived from the panoptic ground truth (thing segments as RLE masks; crowd kept as ``iscrowd``).

Cityscapes: this is COCO-style AP on the panoptic ground truth, not cityscapesscripts' own
instance-level evaluation (which needs the ``*_instanceIds.png`` files and, in detectron2 main,
an internal module); the two differ slightly in how they count small and crowd regions.
"""

import json
import logging
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from panoptic_pq.panoptic_files import read_panoptic_png
from panoptic_pq.segment_matching import segment_index_map

from ..compat import detectron2_has_compiled_ops
from ..data.class_layout import PanopticClassLayout
from .panoptic_evaluation import load_panoptic_ground_truth

__all__ = ["PanopticInstanceEvaluator", "panoptic_to_coco_instances"]

logger = logging.getLogger(__name__)


def panoptic_to_coco_instances(
    gt_json: Dict[str, Any],
    gt_root: str,
    thing_dataset_ids: Sequence[int],
    output_file: str,
) -> str:
    """
    Write a COCO instances JSON with the thing segments of a COCO panoptic ground truth.

    Args:
        gt_json (dict): the COCO panoptic JSON ("annotations", "categories", maybe "images").
        gt_root (str): folder of its PNG files.
        thing_dataset_ids (list[int]): the category ids that are things.
        output_file (str): where to write the JSON.

    Returns:
        str: ``output_file``.
    """
    things = {int(c) for c in thing_dataset_ids}
    images_by_id = {str(im["id"]): im for im in gt_json.get("images", [])}
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for ann in gt_json["annotations"]:
        png = os.path.join(gt_root, ann["file_name"])
        ids = read_panoptic_png(png)
        image = dict(images_by_id.get(str(ann["image_id"]), {}))
        image.update(id=ann["image_id"], height=ids.shape[0], width=ids.shape[1])
        image.setdefault("file_name", ann["file_name"])
        images.append(image)
        segments = [s for s in ann["segments_info"] if int(s["category_id"]) in things]
        if not segments:
            continue
        index = segment_index_map(ids, np.array([s["id"] for s in segments]))
        for i, seg in enumerate(segments):
            mask = index == 2 + i
            area = int(mask.sum())
            if area == 0:
                continue
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": ann["image_id"],
                    "category_id": int(seg["category_id"]),
                    "segmentation": rle,
                    "area": area,
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": int(seg.get("iscrowd", 0)),
                }
            )
    categories = [
        {"id": c["id"], "name": c.get("name", str(c["id"]))}
        for c in gt_json["categories"]
        if int(c["id"]) in things
    ]
    PathManager.mkdirs(os.path.dirname(output_file) or ".")
    with PathManager.open(output_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    logger.info(
        f"Wrote {len(annotations)} thing instances of {len(images)} images to {output_file}"
    )
    return output_file


def _usable_json_file(metadata: Any) -> Optional[str]:
    json_file = metadata.get("json_file")
    if json_file and PathManager.exists(json_file):
        return json_file
    return None


class PanopticInstanceEvaluator(COCOEvaluator):
    """
    detectron2's ``COCOEvaluator`` (bbox and segm AP of ``outputs["instances"]``) on a panoptic
    dataset, with the instance classes of :class:`PanopticClassLayout` mapped exactly to dataset
    ids. The fast (compiled) COCOeval is used only when detectron2's ops are compiled.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        use_fast_impl: Optional[bool] = None,
        instances_json: Optional[str] = None,
    ):
        """
        Args:
            dataset_name (str): a panoptic dataset (thing metadata; ``json_file`` or
                ``panoptic_json`` / ``panoptic_root``).
            output_dir (str): COCOEvaluator's dumps, and the derived instances JSON (cached
                there; a temporary directory otherwise).
            tasks (list[str]): "bbox", "segm"; None = inferred from the predictions.
            distributed (bool): gather the predictions of all ranks.
            use_fast_impl (bool): None = ``detectron2_has_compiled_ops()``.
            instances_json (str): a COCO instances JSON to use instead of ``json_file`` or the
                derived one.
        """
        metadata = MetadataCatalog.get(dataset_name)
        layout = PanopticClassLayout.from_metadata(metadata)
        if layout.num_thing_classes == 0:
            raise ValueError(f"dataset {dataset_name!r} has no thing classes to evaluate AP on")
        self._tmp_dir = None
        json_file = instances_json or _usable_json_file(metadata)
        if json_file is None:
            json_file = self._derive_instances_json(dataset_name, metadata, layout, output_dir)
        with PathManager.open(json_file) as f:
            categories = json.load(f).get("categories", [])
        names = dict(zip(layout.thing_dataset_ids, layout.thing_names))
        # COCOeval orders categories by id; per-category AP names follow that order.
        class_names = [
            names.get(int(c["id"]), c.get("name", str(c["id"])))
            for c in sorted(categories, key=lambda c: int(c["id"]))
        ]
        eval_name = f"{dataset_name}__panoptic_ext_instances"
        if eval_name in MetadataCatalog.list():
            MetadataCatalog.remove(eval_name)
        MetadataCatalog.get(eval_name).set(
            json_file=json_file,
            thing_classes=class_names,
            thing_dataset_id_to_contiguous_id={
                d: k for k, d in enumerate(layout.thing_dataset_ids)
            },
            evaluator_type="coco",
        )
        if use_fast_impl is None:
            use_fast_impl = detectron2_has_compiled_ops()
        super().__init__(
            eval_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            use_fast_impl=use_fast_impl,
        )

    def _derive_instances_json(
        self, dataset_name: str, metadata: Any, layout: PanopticClassLayout, output_dir
    ) -> str:
        if output_dir:
            json_file = os.path.join(output_dir, f"{dataset_name}_instances_from_panoptic.json")
        else:
            self._tmp_dir = tempfile.TemporaryDirectory(prefix="panoptic_ext_instances_")
            json_file = os.path.join(self._tmp_dir.name, "instances.json")
        panoptic_json = PathManager.get_local_path(metadata.get("panoptic_json", "") or "")
        fresh = (
            PathManager.exists(json_file)
            and os.path.isfile(panoptic_json)
            and os.path.getmtime(json_file) >= os.path.getmtime(panoptic_json)
        )
        if fresh:
            logger.info(f"Using cached instances JSON {json_file}")
            return json_file
        # A temporary file is per process; a file in output_dir is written once for all ranks.
        shared = self._tmp_dir is None
        if not shared or comm.is_main_process():
            gt_root, gt_json = load_panoptic_ground_truth(metadata)
            panoptic_to_coco_instances(gt_json, gt_root, layout.thing_dataset_ids, json_file)
        if shared:
            comm.synchronize()
        return json_file
