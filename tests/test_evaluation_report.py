"""The HTML evaluation report (panoptic_pq.report): its numbers are the evaluator's,
the page is complete and opens from disk, on the synthetic set and on a COCO-like set of 133
classes."""

import html.parser
import json
import os

import numpy as np
import pytest
from PIL import Image

from panoptic_ext.data import rgb_to_id
from panoptic_ext.data.panoptic_ids import id_to_rgb
from panoptic_ext.data.synthetic import SYNTHETIC_CATEGORIES, render_sample
from panoptic_ext.evaluation import pq_compute
from panoptic_pq.cli import main as pq_cli_main
from panoptic_pq.report import SECTIONS, write_panoptic_report

# COCO's 80 thing ids (1..90 less ten unused) and 53 stuff ids.
COCO_THING_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
COCO_STUFF_IDS = list(range(92, 92 + 2 * 53, 2))


def _write_split(root, name, samples, categories):
    """COCO panoptic files: ``root/<name>.json``, PNGs in ``root/<name>/``, images in
    ``root/images/``; samples are (image or None, ids, segments_info)."""
    folder = root / name
    folder.mkdir(parents=True)
    (root / "images").mkdir(exist_ok=True)
    images, annotations = [], []
    for i, (image, ids, segments) in enumerate(samples, start=1):
        Image.fromarray(id_to_rgb(ids)).save(folder / f"{i:04d}.png")
        if image is not None:
            Image.fromarray(image).save(root / "images" / f"{i:04d}.jpg", quality=95)
        images.append(
            {"id": i, "file_name": f"{i:04d}.jpg", "height": ids.shape[0], "width": ids.shape[1]}
        )
        annotations.append({"image_id": i, "file_name": f"{i:04d}.png", "segments_info": segments})
    path = root / f"{name}.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return str(path), str(folder)


def _perturbed(rng, ids, segments, categories):
    """A prediction made from the ground truth with every kind of error: segments dropped,
    given another class, shifted, and made-up segments."""
    same_kind = {
        flag: [c["id"] for c in categories if bool(c["isthing"]) == flag] for flag in (0, 1)
    }
    isthing = {c["id"]: bool(c["isthing"]) for c in categories}
    pred = np.zeros_like(ids)
    out, next_id = [], 1
    for seg in segments:
        mask = ids == seg["id"]
        r = rng.random()
        if r < 0.15:
            continue  # missed
        category = seg["category_id"]
        if r < 0.3:
            category = int(rng.choice(same_kind[int(isthing[category])]))  # wrong class
        elif r < 0.45:
            mask = np.roll(mask, int(rng.integers(3, 12)), axis=int(rng.integers(0, 2)))
        pred[mask] = next_id
        out.append({"id": next_id, "category_id": category, "iscrowd": 0})
        next_id += 1
    h, w = ids.shape
    for _ in range(int(rng.integers(0, 3))):  # made-up segments
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        pred[y : y + int(rng.integers(4, 40)), x : x + int(rng.integers(4, 40))] = next_id
        out.append({"id": next_id, "category_id": int(rng.choice(list(isthing))), "iscrowd": 0})
        next_id += 1
    present = set(np.unique(pred).tolist())
    return pred, [s for s in out if s["id"] in present]


def _coco_like_sample(rng, h, w, categories):
    """Random stuff regions then thing rectangles, 133-class ids, some crowd and void."""
    ids = np.zeros((h, w), np.int64)
    segments = []
    stuff = [c["id"] for c in categories if not c["isthing"]]
    things = [c["id"] for c in categories if c["isthing"]]
    cut = sorted(rng.choice(np.arange(8, h - 8), size=2, replace=False))
    for k, (y0, y1) in enumerate(zip([0] + cut, cut + [h])):
        ids[y0:y1] = 1 + k
        segments.append({"id": 1 + k, "category_id": int(rng.choice(stuff)), "iscrowd": 0})
    for k in range(int(rng.integers(2, 9))):
        sid = 100 + k
        y, x = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
        ids[y : y + int(rng.integers(5, 70)), x : x + int(rng.integers(5, 70))] = sid
        crowd = int(rng.random() < 0.1)
        segments.append({"id": sid, "category_id": int(rng.choice(things)), "iscrowd": crowd})
    ids[:2] = 0  # void
    for seg in segments:
        seg["area"] = int((ids == seg["id"]).sum())
    segments = [s for s in segments if s["area"]]
    return ids, segments


def _check_page(report_dir, num_gallery):
    """Every section present, every picture it references exists and is an image."""

    class Page(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids, self.images, self.remote = [], [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if "id" in attrs:
                self.ids.append(attrs["id"])
            if tag == "img":
                self.images.append(attrs["src"])
            for key in ("src", "href"):
                if key in attrs and attrs[key].startswith(("http:", "https:", "//")):
                    self.remote.append(attrs[key])
            if tag in ("script", "link"):
                self.remote.append(tag)

    page = Page()
    page.feed((report_dir / "index.html").read_text(encoding="utf-8"))
    assert page.ids == list(SECTIONS)
    assert not page.remote  # opens from disk, no network
    for src in page.images:
        path = report_dir / src
        assert path.is_file(), src
        with Image.open(path) as img:
            assert min(img.size) > 0
    assert sum(1 for src in page.images if "gallery_" in src) == 3 * num_gallery
    return page


def _assert_same_numbers(report, gt_json, gt_folder, pred_json, pred_folder):
    expected = pq_compute(gt_json, pred_json, gt_folder, pred_folder)
    assert report["results"] == expected
    # the error analysis counts every false positive and negative the evaluator counts
    for c, count in report["counts"].items():
        mine = [e for e in report["errors"] if e["category_id"] == c]
        assert sum(e["kind"] == "fn" for e in mine) == count["fn"]
        assert sum(e["kind"] == "fp" for e in mine) == count["fp"]


def test_report_on_the_synthetic_set(tmp_path):
    rng = np.random.default_rng(0)
    gt, pred = [], []
    for _ in range(8):
        image, ids, segments = render_sample(rng, 96, 128, allow_crowd=True)
        gt.append((image, ids, segments))
        pred.append((None,) + _perturbed(rng, ids, segments, SYNTHETIC_CATEGORIES))
    gt_json, gt_folder = _write_split(tmp_path, "gt", gt, SYNTHETIC_CATEGORIES)
    pred_json, pred_folder = _write_split(tmp_path / "pred", "predictions", pred, [])
    out = tmp_path / "report"
    report = write_panoptic_report(
        str(out),
        gt_json,
        gt_folder,
        str(tmp_path / "images"),
        pred_json,
        pred_folder,
        num_worst=5,
    )
    _assert_same_numbers(report, gt_json, gt_folder, pred_json, pred_folder)
    assert 0 < report["results"]["All"]["pq"] < 1
    _check_page(out, 5)
    causes = {(e["kind"], e["cause"]) for e in report["errors"]}
    assert {("fn", "missed"), ("fn", "wrong class"), ("fp", "wrong class")} <= causes
    # the gallery: lowest PQ first, colored with the categories' colors
    pqs = [w["pq"] for w in json.loads((out / "report.json").read_text())["worst"]]
    assert pqs == sorted(pqs) and len(pqs) == 5
    first = report["worst"][0]
    gt_overlay = np.asarray(Image.open(out / "images" / "gallery_001_gt.jpg").convert("RGB"))
    assert gt_overlay.shape == (96, 128, 3)
    ids = rgb_to_id(np.asarray(Image.open(f"{gt_folder}/{first:04d}.png")))
    assert gt_overlay.std() > 0 and ids.shape == gt_overlay.shape[:2]


def test_report_on_a_coco_like_set_of_133_classes(tmp_path):
    categories = [{"id": i, "name": f"thing{i}", "isthing": 1} for i in COCO_THING_IDS]
    categories += [{"id": i, "name": f"stuff{i}", "isthing": 0} for i in COCO_STUFF_IDS]
    assert len(categories) == 133
    rng = np.random.default_rng(1)
    gt, pred = [], []
    for k in range(12):
        ids, segments = _coco_like_sample(rng, 80, 112, categories)
        image = rng.integers(0, 255, (80, 112, 3), dtype=np.uint8) if k % 3 else None
        gt.append((image, ids, segments))
        pred.append((None,) + _perturbed(rng, ids, segments, categories))
    gt_json, gt_folder = _write_split(tmp_path, "panoptic_val2017", gt, categories)
    pred_json, pred_folder = _write_split(tmp_path / "pred", "predictions", pred, [])
    out = tmp_path / "report"
    report = write_panoptic_report(
        str(out),
        gt_json,
        gt_folder,
        str(tmp_path / "images"),
        pred_json,
        pred_folder,
        num_worst=6,
        num_workers=2,
    )
    _assert_same_numbers(report, gt_json, gt_folder, pred_json, pred_folder)
    _check_page(out, 6)
    assert report["results"]["Things"]["n"] > 20 and report["results"]["Stuff"]["n"] > 10


def test_panoptic_pq_writes_the_report(tmp_path, capsys):
    rng = np.random.default_rng(2)
    gt, pred = [], []
    for _ in range(3):
        image, ids, segments = render_sample(rng, 64, 64)
        gt.append((image, ids, segments))
        pred.append((None,) + _perturbed(rng, ids, segments, SYNTHETIC_CATEGORIES))
    gt_json, gt_folder = _write_split(tmp_path, "gt", gt, SYNTHETIC_CATEGORIES)
    pred_json, pred_folder = _write_split(tmp_path / "pred", "predictions", pred, [])
    out = tmp_path / "report"
    argv = ["--gt-json", gt_json, "--pred-json", pred_json, "--report", str(out)]
    assert pq_cli_main(argv + ["--images", str(tmp_path / "images")]) == 0
    numbers = json.loads((out / "report.json").read_text())["results"]
    assert numbers["All"] == pq_compute(gt_json, pred_json)["All"]
    _check_page(out, 3)
    assert "report" in capsys.readouterr().out


def test_report_names_a_missing_prediction_png(tmp_path):
    rng = np.random.default_rng(3)
    image, ids, segments = render_sample(rng, 48, 48)
    gt_json, gt_folder = _write_split(
        tmp_path, "gt", [(image, ids, segments)], SYNTHETIC_CATEGORIES
    )
    pred_json, pred_folder = _write_split(
        tmp_path / "pred", "p", [(None,) + _perturbed(rng, ids, segments, SYNTHETIC_CATEGORIES)], []
    )
    os.remove(os.path.join(pred_folder, "0001.png"))
    with pytest.raises(FileNotFoundError, match="0001.png"):
        write_panoptic_report(str(tmp_path / "r"), gt_json, gt_folder, None, pred_json, pred_folder)


def test_report_after_evaluation_of_a_registered_dataset(tmp_path):
    """What ``train_net.py --eval-only`` would call after its evaluation: the report of the
    predictions the evaluator saved (TEST.SAVE_PANOPTIC_PNGS), with the evaluator's numbers."""
    import torch
    from detectron2.data import DatasetCatalog

    from panoptic_ext.evaluation import PanopticQualityEvaluator
    from panoptic_ext.evaluation.report import write_report_for_dataset
    from tests.reliability_common import register_tiny_synthetic, unregister

    names = register_tiny_synthetic(str(tmp_path), "report_tiny", num_train=1, num_val=4)
    try:
        records = DatasetCatalog.get(names["val"])  # generates the files
        evaluated = tmp_path / "inference"
        evaluator = PanopticQualityEvaluator(names["val"], str(evaluated), save_pngs=True)
        evaluator.reset()
        with pytest.raises(FileNotFoundError, match="TEST.SAVE_PANOPTIC_PNGS True"):
            write_report_for_dataset(names["val"], str(evaluated), str(tmp_path / "report"))
        rng = np.random.default_rng(4)
        for record in records:
            ids = rgb_to_id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
            pred, segments = _perturbed(rng, ids, _gt_segments(record), SYNTHETIC_CATEGORIES)
            outputs = [{"panoptic_seg": (torch.as_tensor(pred.astype(np.int32)), segments)}]
            evaluator.process([{"image_id": record["image_id"]}], outputs)
        pq = evaluator.evaluate()["panoptic_seg"]["PQ"]
        report = write_report_for_dataset(names["val"], str(evaluated), str(tmp_path / "report"))
        assert 100 * report["results"]["All"]["pq"] == pq
        _check_page(tmp_path / "report", 4)
    finally:
        unregister(names["train"], names["val"])


def _gt_segments(record):
    """The record's gt segments with the dataset's category ids (from the gt JSON)."""
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get("report_tiny_val")
    with open(metadata.panoptic_json) as f:
        gt = json.load(f)
    (ann,) = [a for a in gt["annotations"] if a["image_id"] == record["image_id"]]
    return ann["segments_info"]
