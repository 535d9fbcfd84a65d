"""Evaluators on a tiny panoptic dataset registered in a temporary directory, with hand-made
model outputs (detectron2's PanopticFPN output format)."""

import contextlib
import io
import json
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators
from detectron2.structures import Boxes, Instances
from PIL import Image

import panoptic_ext.evaluation.build as build_module
from panoptic_ext import add_panoptic_ext_config
from panoptic_ext.compat import detectron2_has_compiled_ops
from panoptic_ext.evaluation import (
    PanopticInstanceEvaluator,
    PanopticQualityEvaluator,
    PanopticSemSegEvaluator,
    build_panoptic_evaluators,
    id_to_rgb,
    pq_compute,
)

PERSON, CAR, ROAD, SKY = 1, 3, 21, 22
CATEGORIES = [
    {"id": PERSON, "name": "person", "isthing": 1},
    {"id": CAR, "name": "car", "isthing": 1},
    {"id": ROAD, "name": "road", "isthing": 0},
    {"id": SKY, "name": "sky", "isthing": 0},
]
# Two metadata layouts of the same dataset: COCO "standard" (things first) and Cityscapes-like
# (stuff first: thing contiguous ids are 2, 3 while instance classes are 0, 1).
LAYOUTS = {
    "coco": ({PERSON: 0, CAR: 1}, {ROAD: 2, SKY: 3}),
    "cityscapes": ({PERSON: 2, CAR: 3}, {ROAD: 0, SKY: 1}),
}


def _gt_image(h, w, shift):
    """Ground truth ids: sky / road halves, a person, a car, a person crowd, a VOID patch."""
    ids = np.zeros((h, w), np.int64)
    ids[: h // 2] = 100
    ids[h // 2 :] = 101
    ids[3:5, 1 + shift : 3 + shift] = 102
    ids[3:6, 5:7] = 103
    ids[0:2, w - 2 :] = 104
    ids[h - 1, 0:2] = 0
    segments = [
        {"id": 100, "category_id": SKY, "iscrowd": 0},
        {"id": 101, "category_id": ROAD, "iscrowd": 0},
        {"id": 102, "category_id": PERSON, "iscrowd": 0},
        {"id": 103, "category_id": CAR, "iscrowd": 0},
        {"id": 104, "category_id": PERSON, "iscrowd": 1},
    ]
    for s in segments:
        s["area"] = int((ids == s["id"]).sum())
        ys, xs = np.nonzero(ids == s["id"])
        s["bbox"] = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
    return ids, segments


IMAGES = [("a", 8, 9, 0), ("b", 7, 10, 1)]  # name, height, width, person shift


def write_dataset(root, image_ids):
    """COCO panoptic JSON + PNG folder; returns (panoptic_json, panoptic_root, gt by image id)."""
    pan_root = os.path.join(root, "panoptic")
    os.makedirs(pan_root, exist_ok=True)
    images, annotations, gt = [], [], {}
    for (name, h, w, shift), image_id in zip(IMAGES, image_ids):
        ids, segments = _gt_image(h, w, shift)
        Image.fromarray(id_to_rgb(ids)).save(os.path.join(pan_root, name + ".png"))
        images.append({"id": image_id, "file_name": name + ".jpg", "height": h, "width": w})
        annotations.append(
            {"image_id": image_id, "file_name": name + ".png", "segments_info": segments}
        )
        gt[image_id] = (ids, segments)
    pan_json = os.path.join(root, "panoptic.json")
    with open(pan_json, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return pan_json, pan_root, gt


@pytest.fixture(params=["coco", "cityscapes"])
def dataset(request, tmp_path):
    """A registered tiny dataset: (name, gt by image id, inputs)."""
    layout = request.param
    OUTPUT_IDS.update(things=LAYOUTS[layout][0], stuff=LAYOUTS[layout][1])
    image_ids = [7, 8] if layout == "coco" else ["city_000000_000019", "city_000001_000019"]
    pan_json, pan_root, gt = write_dataset(str(tmp_path), image_ids)
    name = f"tiny_panoptic_{layout}_{uuid.uuid4().hex[:8]}"
    thing_map, stuff_map = LAYOUTS[layout]
    names = {c["id"]: c["name"] for c in CATEGORIES}
    classes = [None] * 4
    for d, c in {**thing_map, **stuff_map}.items():
        classes[c] = names[d]
    records = [
        {
            "file_name": os.path.join(str(tmp_path), n + ".jpg"),
            "image_id": i,
            "height": h,
            "width": w,
            "pan_seg_file_name": os.path.join(pan_root, n + ".png"),
        }
        for (n, h, w, _), i in zip(IMAGES, image_ids)
    ]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        panoptic_json=pan_json,
        panoptic_root=pan_root,
        thing_dataset_id_to_contiguous_id=thing_map,
        stuff_dataset_id_to_contiguous_id=stuff_map,
        thing_classes=classes,
        stuff_classes=classes,
        evaluator_type="coco_panoptic_seg" if layout == "coco" else "cityscapes_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
    )
    yield name, gt, records
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


# Model labels of the tiny dataset: instance classes person 0, car 1; merged stuff road 1, sky 2.
INSTANCE_CLASS = {PERSON: 0, CAR: 1}
MERGED_LABEL = {ROAD: 1, SKY: 2}
# The category ids of model outputs: the current dataset's contiguous ids (set by `dataset`).
OUTPUT_IDS = {"things": LAYOUTS["coco"][0], "stuff": LAYOUTS["coco"][1]}


def model_output(gt_ids, gt_segments, *, with_crowd_person=True, drop=(), relabel=None):
    """A PanopticFPN-style output that reproduces the ground truth (crowd as a person segment,
    VOID as road), optionally dropping or relabelling some gt segments."""
    relabel = relabel or {}
    h, w = gt_ids.shape
    pan = torch.zeros((h, w), dtype=torch.int32)
    segments_info = []
    for s in gt_segments:
        if s["id"] in drop or (s["iscrowd"] and not with_crowd_person):
            continue
        mask = gt_ids == s["id"]
        if s["category_id"] == ROAD:
            mask = mask | (gt_ids == 0)
        new_id = len(segments_info) + 1
        pan[torch.from_numpy(mask)] = new_id
        cat = relabel.get(s["id"], s["category_id"])
        if cat in INSTANCE_CLASS:
            info = {"id": new_id, "isthing": True, "category_id": OUTPUT_IDS["things"][cat]}
            info.update(score=0.9, instance_id=new_id - 1)
        else:
            info = {"id": new_id, "isthing": False, "category_id": OUTPUT_IDS["stuff"][cat]}
            info["area"] = 1
        segments_info.append(info)
    # Semantic logits, "merged" layout: 0 things, 1 road, 2 sky (VOID pixels: road).
    labels = np.zeros((h, w), np.int64)
    for s in gt_segments:
        if s["category_id"] in MERGED_LABEL:
            labels[gt_ids == s["id"]] = MERGED_LABEL[s["category_id"]]
    labels[gt_ids == 0] = MERGED_LABEL[ROAD]
    sem_seg = torch.nn.functional.one_hot(torch.from_numpy(labels), 3).permute(2, 0, 1).float()
    # Instances: the non-crowd things.
    things = [s for s in gt_segments if s["category_id"] in INSTANCE_CLASS and not s["iscrowd"]]
    instances = Instances((h, w))
    masks = torch.stack([torch.from_numpy(gt_ids == s["id"]) for s in things])
    boxes = [[x, y, x + bw, y + bh] for x, y, bw, bh in (s["bbox"] for s in things)]
    instances.pred_masks = masks
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.full((len(things),), 0.9)
    instances.pred_classes = torch.tensor(
        [INSTANCE_CLASS[relabel.get(s["id"], s["category_id"])] for s in things]
    )
    return {"panoptic_seg": (pan, segments_info), "sem_seg": sem_seg, "instances": instances}


def run(evaluator, records, outputs):
    evaluator.reset()
    for record, output in zip(records, outputs):
        evaluator.process([record], [output])
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.evaluate()


def reference_pq(tmp_dir, dataset_name, gt, records, outputs):
    """pq_compute (cross-checked with panopticapi's code in test_pq.py) on prediction files
    written by hand with dataset category ids."""
    to_dataset = [{v: k for k, v in OUTPUT_IDS[kind].items()} for kind in ("things", "stuff")]
    pred_root = os.path.join(tmp_dir, "ref_pred")
    os.makedirs(pred_root, exist_ok=True)
    annotations = []
    for record, output in zip(records, outputs):
        pan, segments_info = output["panoptic_seg"]
        name = f"{record['image_id']}.png"
        Image.fromarray(id_to_rgb(pan.numpy())).save(os.path.join(pred_root, name))
        segments = [
            {"id": s["id"], "category_id": to_dataset[0 if s["isthing"] else 1][s["category_id"]]}
            for s in segments_info
        ]
        annotations.append(
            {"image_id": record["image_id"], "file_name": name, "segments_info": segments}
        )
    pred_json = os.path.join(tmp_dir, "ref_pred.json")
    with open(pred_json, "w") as f:
        json.dump({"annotations": annotations}, f)
    meta = MetadataCatalog.get(dataset_name)
    return pq_compute(meta.panoptic_json, pred_json, meta.panoptic_root, pred_root)


def test_perfect_prediction(dataset):
    name, gt, records = dataset
    outputs = [model_output(*gt[r["image_id"]]) for r in records]
    res = run(PanopticQualityEvaluator(name), records, outputs)["panoptic_seg"]
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert res[key] == pytest.approx(100.0), key
    assert res["PQ-person"] == pytest.approx(100.0) and res["RQ-sky"] == pytest.approx(100.0)


def test_errors_equal_pq_compute(dataset, tmp_path):
    name, gt, records = dataset
    ids_a, segs_a = gt[records[0]["image_id"]]
    ids_b, segs_b = gt[records[1]["image_id"]]
    outputs = [
        model_output(ids_a, segs_a, drop=(102,), relabel={100: ROAD}),  # FN person; sky->road
        model_output(ids_b, segs_b, with_crowd_person=False, relabel={103: PERSON}),
    ]
    res = run(PanopticQualityEvaluator(name), records, outputs)["panoptic_seg"]
    ref = reference_pq(str(tmp_path), name, gt, records, outputs)
    assert res["PQ"] == pytest.approx(100 * ref["All"]["pq"], abs=1e-9)
    assert res["PQ_th"] == pytest.approx(100 * ref["Things"]["pq"], abs=1e-9)
    assert res["SQ_st"] == pytest.approx(100 * ref["Stuff"]["sq"], abs=1e-9)
    assert res["RQ"] == pytest.approx(100 * ref["All"]["rq"], abs=1e-9)
    assert res["PQ-car"] == pytest.approx(100 * ref["per_class"][CAR]["pq"], abs=1e-9)
    # Hand-computed: person: FN in image a (the crowd prediction is ignored), TP + FP (the
    # car called person) in image b; car: TP in image a, FN in image b.
    assert res["RQ-person"] == pytest.approx(100 * 1 / (1 + 0.5 + 0.5))
    assert res["RQ-car"] == pytest.approx(100 * 1 / (1 + 0.5))
    assert res["PQ"] < 100


def test_saved_predictions_evaluate_the_same(dataset, tmp_path):
    name, gt, records = dataset
    ids_b, segs_b = gt[records[1]["image_id"]]
    outputs = [
        model_output(*gt[records[0]["image_id"]]),
        model_output(ids_b, segs_b, drop=(101,)),
    ]
    out_dir = str(tmp_path / "eval")
    res = run(PanopticQualityEvaluator(name, out_dir, save_pngs=True), records, outputs)
    res = res["panoptic_seg"]
    meta = MetadataCatalog.get(name)
    saved = pq_compute(
        meta.panoptic_json, os.path.join(out_dir, "predictions.json"), meta.panoptic_root
    )
    assert res["PQ"] == pytest.approx(100 * saved["All"]["pq"])
    assert res["PQ_st"] == pytest.approx(100 * saved["Stuff"]["pq"]) and res["PQ_st"] < 100
    with open(os.path.join(out_dir, "pq_results.json")) as f:
        assert json.load(f)["All"]["pq"] == pytest.approx(saved["All"]["pq"])


def test_output_dir_keeps_only_the_json_by_default(dataset, tmp_path):
    """As detectron2's COCOPanopticEvaluator: predictions.json, no PNGs (opt-in)."""
    name, gt, records = dataset
    outputs = [model_output(*gt[r["image_id"]]) for r in records]
    out_dir = tmp_path / "eval"
    evaluator = PanopticQualityEvaluator(name, str(out_dir))
    res = run(evaluator, records, outputs)["panoptic_seg"]
    assert res["PQ"] == pytest.approx(100.0)
    assert sorted(os.listdir(out_dir)) == ["pq_results.json", "predictions.json"]
    with open(out_dir / "predictions.json") as f:
        annotations = json.load(f)["annotations"]
    assert [a["image_id"] for a in annotations] == [r["image_id"] for r in records]
    assert all("png_string" not in a and a["segments_info"] for a in annotations)


def test_label_divisor_encoding(dataset):
    """segments_info None: panoptic ids are record_id * label_divisor + instance (-1 VOID)."""
    name, gt, records = dataset
    meta = MetadataCatalog.get(name)
    record_id = {
        **meta.thing_dataset_id_to_contiguous_id,
        **meta.stuff_dataset_id_to_contiguous_id,
    }
    outputs = []
    for r in records:
        ids, segments = gt[r["image_id"]]
        pan = torch.full(ids.shape, -1, dtype=torch.int32)
        for k, s in enumerate(segments):
            if not s["iscrowd"]:
                pan[torch.from_numpy(ids == s["id"])] = record_id[s["category_id"]] * 1000 + k
        outputs.append({"panoptic_seg": (pan, None)})
    res = run(PanopticQualityEvaluator(name), records, outputs)["panoptic_seg"]
    assert res["PQ"] == pytest.approx(100.0)


def test_inconsistent_output_names_the_image(dataset):
    name, gt, records = dataset
    output = model_output(*gt[records[0]["image_id"]])
    pan, segments_info = output["panoptic_seg"]
    output["panoptic_seg"] = (pan, segments_info[1:])  # id 1 in the map, not listed
    evaluator = PanopticQualityEvaluator(name)
    evaluator.reset()
    with pytest.raises(ValueError, match=r"segment ids \[1\] are in the predicted PNG"):
        evaluator.process(records[:1], [output])
    with pytest.raises(ValueError, match="not in its panoptic JSON"):
        evaluator.process([dict(records[0], image_id=12345)], [output])


def test_perfect_and_folded_predictions(dataset):
    name, gt, records = dataset
    outputs = [model_output(*gt[r["image_id"]]) for r in records]
    res = run(PanopticSemSegEvaluator(name), records, outputs)["sem_seg"]
    assert res["mIoU"] == pytest.approx(100.0) and res["pACC"] == pytest.approx(100.0)
    assert {k for k in res if k.startswith("IoU-")} == {"IoU-things", "IoU-road", "IoU-sky"}
    # "all"-layout logits (person, car, road, sky) are folded to the merged labels.
    for o in outputs:
        merged = o["sem_seg"]
        o["sem_seg"] = torch.cat([merged[:1] * 0.5, merged[:1], merged[1:]])
    assert run(PanopticSemSegEvaluator(name), records, outputs)["sem_seg"] == res


def test_hand_computed_everything_sky(dataset):
    name, gt, records = dataset
    outputs = []
    for r in records:
        o = model_output(*gt[r["image_id"]])
        o["sem_seg"] = torch.zeros_like(o["sem_seg"])
        o["sem_seg"][2] = 1  # every pixel: sky
        outputs.append(o)
    res = run(PanopticSemSegEvaluator(name), records, outputs)["sem_seg"]
    valid = sky = 0
    for ids, _ in gt.values():
        valid += int((ids != 0).sum())  # crowd keeps its class, VOID is ignored
        sky += int((ids == 100).sum())
    assert res["IoU-sky"] == pytest.approx(100 * sky / valid)
    assert res["IoU-road"] == 0 and res["IoU-things"] == 0
    assert res["mIoU"] == pytest.approx(100 * sky / valid / 3)
    assert res["pACC"] == pytest.approx(100 * sky / valid)
    assert res["ACC-sky"] == pytest.approx(100.0)


def test_all_classes_from_panoptic_output(dataset):
    name, gt, records = dataset
    ids_a, segs_a = gt[records[0]["image_id"]]
    outputs = [model_output(ids_a, segs_a), model_output(*gt[records[1]["image_id"]])]
    evaluator = PanopticSemSegEvaluator(name, label_space="all", prediction_source="panoptic_seg")
    res = run(evaluator, records, outputs)["sem_seg"]
    assert res["mIoU"] == pytest.approx(100.0)
    assert {"IoU-person", "IoU-car", "IoU-road", "IoU-sky"} <= set(res)
    # Without the crowd segment, its person pixels become VOID predictions: misses.
    outputs[0] = model_output(ids_a, segs_a, with_crowd_person=False)
    res = run(evaluator, records, outputs)["sem_seg"]
    crowd = int((ids_a == 104).sum())
    person = sum(int(np.isin(ids, [102, 104]).sum()) for ids, _ in gt.values())
    assert res["IoU-person"] == pytest.approx(100 * (person - crowd) / person)
    assert res["IoU-car"] == pytest.approx(100.0)
    # The merged logits cannot give the four classes.
    with pytest.raises(ValueError, match="prediction_source='panoptic_seg'"):
        run(PanopticSemSegEvaluator(name, label_space="all"), records, outputs)


def recording(module, name, calls):
    """``module.name`` (a class or function) that also appends (name, keyword arguments) to
    ``calls`` when called."""
    original = getattr(module, name)

    def call(*args, **kwargs):
        calls.append((name, kwargs))
        return original(*args, **kwargs)

    return call


@pytest.fixture
def cocoeval_used(monkeypatch):
    """(name, keyword arguments) of each COCOeval that detectron2's COCO evaluation builds."""
    from detectron2.evaluation import coco_evaluation

    used = []
    for name in ("COCOeval", "COCOeval_opt"):
        monkeypatch.setattr(coco_evaluation, name, recording(coco_evaluation, name, used))
    return used


def test_perfect_and_swapped_classes(dataset, tmp_path, cocoeval_used):
    name, gt, records = dataset
    outputs = [model_output(*gt[r["image_id"]]) for r in records]
    evaluator = PanopticInstanceEvaluator(name, str(tmp_path / "inst"))
    res = run(evaluator, records, outputs)
    # detectron2's fast COCOeval exactly when its compiled ops are there (same results)
    fast = detectron2_has_compiled_ops()
    assert {name for name, _ in cocoeval_used} == {"COCOeval_opt" if fast else "COCOeval"}
    assert res["segm"]["AP"] == pytest.approx(100.0)
    assert res["bbox"]["AP"] == pytest.approx(100.0)
    assert res["segm"]["AP-person"] == pytest.approx(100.0)
    assert res["segm"]["AP-car"] == pytest.approx(100.0)
    # The instances JSON derived from the panoptic ground truth.
    with open(tmp_path / "inst" / f"{name}_instances_from_panoptic.json") as f:
        instances = json.load(f)
    assert [c["id"] for c in instances["categories"]] == [PERSON, CAR]
    assert sorted(a["iscrowd"] for a in instances["annotations"]) == [0, 0, 0, 0, 1, 1]
    # Swapped classes: nothing matches.
    swapped = [model_output(*gt[r["image_id"]], relabel={102: CAR, 103: PERSON}) for r in records]
    res = run(PanopticInstanceEvaluator(name), records, swapped)
    assert res["segm"]["AP"] == pytest.approx(0.0)


def panoptic_ext_cfg():
    cfg = get_cfg()
    add_panoptic_ext_config(cfg)
    return cfg


def test_panoptic_dataset(dataset):
    name, gt, records = dataset
    outputs = [model_output(*gt[r["image_id"]]) for r in records]
    cfg = panoptic_ext_cfg()
    evaluators = build_panoptic_evaluators(cfg, name)
    assert isinstance(evaluators, DatasetEvaluators)
    res = run(evaluators, records, outputs)
    assert set(res) == {"panoptic_seg", "sem_seg", "bbox", "segm"}
    assert res["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    # Cityscapes: mIoU over its 19 classes, from the panoptic output; COCO: the model's
    # merged semantic classes from the semantic logits
    cityscapes = MetadataCatalog.get(name).evaluator_type == "cityscapes_panoptic_seg"
    assert ("IoU-person" in res["sem_seg"]) == cityscapes
    assert ("IoU-things" in res["sem_seg"]) == (not cityscapes)
    only_pq = build_panoptic_evaluators(cfg, name, tasks=["panoptic_seg"])
    assert set(run(only_pq, records, outputs)) == {"panoptic_seg"}
    cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES = False
    without_instances = [{k: v for k, v in o.items() if k != "instances"} for o in outputs]
    res = run(build_panoptic_evaluators(cfg, name), records, without_instances)
    assert set(res) == {"panoptic_seg", "sem_seg"}
    with pytest.raises(ValueError, match="unknown evaluation tasks"):
        build_panoptic_evaluators(cfg, name, tasks=["boxes"])


def test_other_evaluator_types(tmp_path, monkeypatch):
    built = []  # (class name, keyword arguments) of the detectron2 evaluators built
    for class_name in ("SemSegEvaluator", "COCOEvaluator"):
        monkeypatch.setattr(build_module, class_name, recording(build_module, class_name, built))
    name = f"tiny_other_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [])
    meta = MetadataCatalog.get(name)
    meta.set(stuff_classes=["a", "b"], ignore_label=255, evaluator_type="sem_seg")
    try:
        assert isinstance(build_panoptic_evaluators(panoptic_ext_cfg(), name), DatasetEvaluators)
        assert [b[0] for b in built] == ["SemSegEvaluator"]
        MetadataCatalog.remove(name)
        json_file = str(tmp_path / "instances.json")
        with open(json_file, "w") as f:
            json.dump({"images": [], "annotations": [], "categories": []}, f)
        MetadataCatalog.get(name).set(json_file=json_file, evaluator_type="coco")
        build_panoptic_evaluators(panoptic_ext_cfg(), name)
        assert [b[0] for b in built] == ["SemSegEvaluator", "COCOEvaluator"]
        assert built[1][1]["use_fast_impl"] is detectron2_has_compiled_ops()
        MetadataCatalog.remove(name)
        MetadataCatalog.get(name).set(evaluator_type="lvis")
        with pytest.raises(NotImplementedError, match="evaluator_type 'lvis'"):
            build_panoptic_evaluators(panoptic_ext_cfg(), name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
