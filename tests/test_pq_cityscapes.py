"""Cityscapes: the evaluators on ``cityscapes_fine_panoptic_val`` as detectron2 registers it, with
ground truth made by cityscapesscripts' own preparation scripts from a fake polygon annotation,
checked against cityscapesscripts' own panoptic and pixel-level evaluations."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.cityscapes_panoptic import register_all_cityscapes_panoptic
from detectron2.structures import Boxes, Instances
from PIL import Image

from panoptic_ext.data.class_layout import PanopticClassLayout
from panoptic_ext.evaluation import (
    PanopticInstanceEvaluator,
    PanopticQualityEvaluator,
    PanopticSemSegEvaluator,
    read_panoptic_png,
)
from tests.common import write_cityscapes_instance_ids

cs_labels = pytest.importorskip("cityscapesscripts.helpers.labels")
from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs_panoptic  # noqa: E402
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_pixel  # noqa: E402
from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic  # noqa: E402
from cityscapesscripts.preparation.json2labelImg import json2labelImg  # noqa: E402

NAMES = ("cityscapes_fine_panoptic_train", "cityscapes_fine_panoptic_val")
VAL = NAMES[1]
H, W = 64, 128


def _rect(label, x0, y0, x1, y1):
    return {"label": label, "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}


def _objects(i):
    """Polygons in drawing order: stuff, cars, a person, a rider, a car group (crowd), the ego
    vehicle (ignored in evaluation: VOID)."""
    return [
        _rect("sky", 0, 0, W, 20),
        _rect("building", 0, 20, 60, 34),
        _rect("vegetation", 61, 20, W, 34),
        _rect("road", 0, 35, W, H),
        _rect("car", 10 + 5 * i, 40, 35 + 5 * i, 55),
        _rect("car", 75, 38, 100, 50),
        _rect("person", 50, 30, 56, 50),
        _rect("rider", 60, 30, 66, 45),
        _rect("cargroup", 104, 44, 126, 58),
        _rect("ego vehicle", 0, 59, W, H),
    ]


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    datasets = tmp_path_factory.mktemp("datasets")
    gt_fine = datasets / "cityscapes" / "gtFine"
    for i in range(2):
        stem = f"evalcity_000000_{i:06d}"
        poly = gt_fine / "val" / "evalcity" / f"{stem}_gtFine_polygons.json"
        poly.parent.mkdir(parents=True, exist_ok=True)
        poly.write_text(json.dumps({"imgHeight": H, "imgWidth": W, "objects": _objects(i)}))
        write_cityscapes_instance_ids(str(poly))
        json2labelImg(str(poly), str(poly).replace("_polygons.json", "_labelIds.png"), "ids")
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(str(gt_fine), setNames=["val"])

    def register(root):
        for name in NAMES:
            for catalog in (DatasetCatalog, MetadataCatalog):
                if name in catalog.list():
                    catalog.remove(name)
        register_all_cityscapes_panoptic(str(root))

    register(datasets)  # detectron2's builtin registration, under our root
    yield gt_fine
    register(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _model_outputs(layout, gt_fine):
    """PanopticFPN-style outputs (segment category ids: the metadata's train ids) from the gt
    with errors: the first car of image 0 missed, building called wall in image 1, the car
    group predicted as a car, VOID predicted as road."""
    with open(gt_fine / "cityscapes_panoptic_val.json") as f:
        annotations = json.load(f)["annotations"]
    road = layout.stuff_dataset_ids.index(cs_labels.name2label["road"].id)
    wall = layout.stuff_dataset_ids.index(cs_labels.name2label["wall"].id)
    building = cs_labels.name2label["building"].id
    inputs, outputs = [], []
    for n, ann in enumerate(annotations):
        ids = read_panoptic_png(str(gt_fine / "cityscapes_panoptic_val" / ann["file_name"]))
        pan = torch.zeros(ids.shape, dtype=torch.int32)
        segments_info, masks, classes = [], [], []
        first_car = True
        for s in ann["segments_info"]:
            mask = ids == s["id"]
            cat = s["category_id"]
            if cat == cs_labels.name2label["car"].id and first_car and not s["iscrowd"]:
                first_car = False
                if n == 0:
                    continue
            new_id = len(segments_info) + 1
            if cat in layout.thing_dataset_ids:
                k = layout.thing_dataset_ids.index(cat)
                category_id = layout.thing_output_ids[k]
                segments_info.append({"id": new_id, "isthing": True, "category_id": category_id})
                if not s["iscrowd"]:
                    masks.append(mask)
                    classes.append(k)
            else:
                j = wall if (cat == building and n == 1) else layout.stuff_dataset_ids.index(cat)
                if j == road:
                    mask = mask | (ids == 0)
                category_id = layout.stuff_output_ids[j]
                segments_info.append({"id": new_id, "isthing": False, "category_id": category_id})
            pan[torch.from_numpy(mask)] = new_id
        instances = Instances(ids.shape)
        instances.pred_masks = torch.from_numpy(np.stack(masks))
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        instances.pred_boxes = Boxes(torch.tensor(np.array(boxes), dtype=torch.float32))
        instances.scores = torch.full((len(masks),), 0.9)
        instances.pred_classes = torch.tensor(classes)
        inputs.append({"image_id": ann["image_id"], "file_name": ann["file_name"]})
        outputs.append({"panoptic_seg": (pan, segments_info), "instances": instances})
    return inputs, outputs


def _run(evaluator, inputs, outputs):
    evaluator.reset()
    evaluator.process(inputs, outputs)
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.evaluate()


def test_pq_equals_cityscapesscripts(cityscapes, tmp_path):
    layout = PanopticClassLayout.from_metadata(MetadataCatalog.get(VAL))
    assert layout.num_thing_classes == 8 and layout.num_stuff_classes == 11
    inputs, outputs = _model_outputs(layout, cityscapes)
    out_dir = tmp_path / "pq"
    evaluator = PanopticQualityEvaluator(VAL, str(out_dir), save_pngs=True)
    res = _run(evaluator, inputs, outputs)["panoptic_seg"]
    with contextlib.redirect_stdout(io.StringIO()):
        ref = cs_panoptic.evaluatePanoptic(
            str(cityscapes / "cityscapes_panoptic_val.json"),
            str(cityscapes / "cityscapes_panoptic_val"),
            str(out_dir / "predictions.json"),
            str(out_dir / "predictions"),
            str(tmp_path / "cs_results.json"),
        )
    for ours, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for metric in ("pq", "sq", "rq"):
            assert res[metric.upper() + ours] == pytest.approx(100 * ref[group][metric], abs=1e-9)
    assert 50 < res["PQ"] < 100  # the errors show
    assert res["PQ-wall"] == 0 and res["RQ-car"] == pytest.approx(100 * 3 / 3.5)


def test_miou_equals_cityscapesscripts(cityscapes, tmp_path):
    """19-class mIoU from the panoptic output vs cityscapesscripts' pixel-level evaluation of
    the same predictions written as label-id PNGs (VOID as 'unlabeled')."""
    meta = MetadataCatalog.get(VAL)
    layout = PanopticClassLayout.from_metadata(meta)
    inputs, outputs = _model_outputs(layout, cityscapes)
    evaluator = PanopticSemSegEvaluator(VAL, label_space="all", prediction_source="panoptic_seg")
    res = _run(evaluator, inputs, outputs)["sem_seg"]
    label_ids = layout.thing_dataset_ids + layout.stuff_dataset_ids  # in "all" label order
    preds, gts = [], []
    for inp, out in zip(inputs, outputs):
        pan, segments_info = out["panoptic_seg"]
        label = np.zeros(pan.shape, np.uint8)  # 0: 'unlabeled'
        for s in segments_info:
            label_of_model = layout.model_label(s["isthing"], s["category_id"])
            k = label_of_model if s["isthing"] else layout.num_thing_classes + label_of_model - 1
            label[pan.numpy() == s["id"]] = label_ids[k]
        preds.append(str(tmp_path / f"{inp['image_id']}_pred.png"))
        Image.fromarray(label).save(preds[-1])
        gts.append(str(cityscapes / "val" / "evalcity" / f"{inp['image_id']}_gtFine_labelIds.png"))
    args = cs_pixel.args
    saved = {k: getattr(args, k) for k in ("evalLabels", "quiet", "JSONOutput", "colorized")}
    saved["evalInstLevelScore"] = args.evalInstLevelScore
    try:
        args.evalLabels = [lab.id for lab in cs_labels.labels if lab.id >= 0]
        args.quiet, args.JSONOutput, args.colorized, args.evalInstLevelScore = (
            True,
            False,
            False,
            False,
        )
        ref = cs_pixel.evaluateImgLists(preds, gts, args)
    finally:
        for k, v in saved.items():
            setattr(args, k, v)
    assert res["mIoU"] == pytest.approx(100 * ref["averageScoreClasses"], abs=1e-9)
    assert res["IoU-car"] == pytest.approx(100 * ref["classScores"]["car"], abs=1e-9)
    assert len([k for k in res if k.startswith("IoU-")]) == 19


def test_instance_ap_on_train_id_metadata(cityscapes, tmp_path):
    """Thing contiguous ids are train ids 11..18 while instance classes are 0..7."""
    layout = PanopticClassLayout.from_metadata(MetadataCatalog.get(VAL))
    inputs, outputs = _model_outputs(layout, cityscapes)
    evaluator = PanopticInstanceEvaluator(VAL, str(tmp_path / "inst"), tasks=["segm"])
    res = _run(evaluator, inputs, outputs)["segm"]
    assert res["AP-person"] == pytest.approx(100.0) and res["AP-rider"] == pytest.approx(100.0)
    # One of the three cars is missed: recall 2/3 at every threshold.
    assert 50 < res["AP-car"] < 100
