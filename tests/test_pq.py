"""PQ core and pq_compute: hand-computed cases, error handling, cross-checks with panopticapi's
code as ported by cityscapesscripts, and with hotcoco."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from panoptic_ext.evaluation import (
    PanopticFormatError,
    PQStat,
    id_to_rgb,
    pq_compute,
    pq_image,
    read_panoptic_png,
    rgb_to_id,
)
from panoptic_pq.cli import main as pq_main
from panoptic_pq.segment_matching import pair_counts
from tests.pq_fixtures import (
    DEFAULT_CATEGORIES,
    random_panoptic_pair,
    write_panoptic_files,
)

CATEGORIES = {
    1: {"id": 1, "name": "person", "isthing": 1},
    3: {"id": 3, "name": "car", "isthing": 1},
    21: {"id": 21, "name": "road", "isthing": 0},
    22: {"id": 22, "name": "sky", "isthing": 0},
}


def seg(i, cat, area=None, iscrowd=0):
    s = {"id": i, "category_id": cat, "iscrowd": iscrowd}
    if area is not None:
        s["area"] = area
    return s


def per_class(gt, gt_segments, pred, pred_segments):
    stat = pq_image(np.array(gt), gt_segments, np.array(pred), pred_segments, list(CATEGORIES))
    return stat, stat.results(CATEGORIES)


def test_tp_at_iou_06_for_thing_and_stuff():
    gt = [[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]
    pred = [[5, 5, 5, 5], [5, 5, 7, 7], [5, 5, 7, 7], [7, 7, 7, 7]]
    # pred 5 (person): 8 px, 6 on gt 1 -> IoU 6 / (8 + 8 - 6) = 0.6; same for pred 7 (road).
    stat, res = per_class(gt, [seg(1, 1, 8), seg(2, 21, 8)], pred, [seg(5, 1), seg(7, 21)])
    assert res["per_class"][1] == pytest.approx({"pq": 0.6, "sq": 0.6, "rq": 1.0})
    assert res["per_class"][21] == pytest.approx({"pq": 0.6, "sq": 0.6, "rq": 1.0})
    assert res["All"] == pytest.approx({"pq": 0.6, "sq": 0.6, "rq": 1.0, "n": 2})
    assert res["Things"]["n"] == 1 and res["Stuff"]["n"] == 1
    # Categories without gt and predictions are reported as 0 but not averaged.
    assert res["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert stat.tp.tolist() == [1, 0, 1, 0] and stat.fp.sum() == 0 and stat.fn.sum() == 0


def test_iou_exactly_half_does_not_match():
    gt = [[1, 1, 1, 0]]
    pred = [[4, 4, 0, 4]]  # inter 2, union 3 + 3 - 2 - 1 (pred on VOID) = 3: IoU 2/3
    _, res = per_class(gt, [seg(1, 1, 3)], pred, [seg(4, 1)])
    assert res["per_class"][1]["pq"] == pytest.approx(2 / 3)
    gt = [[1, 1, 0, 0]]
    pred = [[4, 9, 9, 9]]  # pred 4: inter 1, union 1 + 2 - 1 = 2: IoU exactly 0.5
    stat, res = per_class(gt, [seg(1, 1, 2)], pred, [seg(4, 1), seg(9, 3)])
    assert (stat.tp[0], stat.fp[0], stat.fn[0]) == (0, 1, 1)
    assert res["per_class"][1]["pq"] == 0.0


def test_false_positive_and_false_negative():
    gt = [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 2, 2], [3, 3, 2, 2]]
    pred = [[5, 5, 6, 6], [5, 5, 6, 6], [8, 6, 6, 6], [6, 6, 6, 6]]
    # gt 1 (person) matched exactly; gt 3 (car) missed (FN); pred 8 (car) on gt 3 with
    # IoU 1/4 (FP); stuff gt 2 vs pred 6: inter 8, union 11 + 8 - 8 = 11.
    stat, res = per_class(
        gt,
        [seg(1, 1, 4), seg(2, 22, 8), seg(3, 3, 4)],
        pred,
        [seg(5, 1), seg(6, 22), seg(8, 3)],
    )
    assert stat.tp.tolist() == [1, 0, 0, 1]
    assert stat.fp.tolist() == [0, 1, 0, 0]
    assert stat.fn.tolist() == [0, 1, 0, 0]
    assert res["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert res["per_class"][22]["pq"] == pytest.approx(8 / 11)
    assert res["Things"] == pytest.approx({"pq": 0.5, "sq": 0.5, "rq": 0.5, "n": 2})
    assert res["All"]["pq"] == pytest.approx((1 + 0 + 8 / 11) / 3)
    assert res["All"]["n"] == 3


def test_crowd_swallows_false_positive_of_its_class_only():
    gt = [[9, 9, 9, 9], [9, 9, 9, 9], [4, 4, 4, 4], [2, 2, 2, 2]]
    gt_segments = [seg(4, 1, 4, iscrowd=1), seg(9, 21, 8), seg(2, 22, 4)]
    # pred 5 (person): 3 px on the person crowd + 1 on road -> 3/4 ignored, not an FP.
    # pred 6 (car): 3 px on the person crowd -> FP (the crowd is of another class).
    # The crowd segment itself is never a false negative.
    pred = [[7, 7, 7, 7], [7, 7, 7, 5], [5, 5, 5, 6], [6, 6, 8, 8]]
    stat, res = per_class(gt, gt_segments, pred, [seg(5, 1), seg(6, 3), seg(7, 21), seg(8, 22)])
    assert (stat.tp[0], stat.fp[0], stat.fn[0]) == (0, 0, 0)
    assert (stat.tp[1], stat.fp[1], stat.fn[1]) == (0, 1, 0)
    assert res["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # not averaged
    assert res["Things"]["n"] == 1  # only car
    # road: pred 7 (7 px) on gt 9: inter 7, union 7 + 8 - 7 = 8.
    assert res["per_class"][21]["pq"] == pytest.approx(7 / 8)
    # sky: pred 8 (2 px) on gt 2 (4 px): IoU 0.5 -> FP + FN.
    assert (stat.tp[3], stat.fp[3], stat.fn[3]) == (0, 1, 1)


def test_only_the_last_crowd_segment_of_a_class_counts():
    # panopticapi keeps one crowd segment per category: the last one listed.
    gt = [[4, 4, 4, 4], [6, 6, 6, 6], [9, 9, 9, 9]]
    gt_segments = [seg(4, 1, 4, iscrowd=1), seg(6, 1, 4, iscrowd=1), seg(9, 21, 4)]
    pred = [[5, 5, 5, 5], [7, 7, 7, 7], [8, 8, 8, 8]]
    stat, _ = per_class(gt, gt_segments, pred, [seg(5, 1), seg(7, 1), seg(8, 21)])
    assert (stat.tp[0], stat.fp[0], stat.fn[0]) == (0, 1, 0)  # pred 5 on the first crowd
    assert (stat.tp[2], stat.fp[2], stat.fn[2]) == (1, 0, 0)


def test_void_swallows_false_positive_and_leaves_union():
    gt = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [2, 2, 2, 2]]
    # pred 5 covers gt 1 plus 4 VOID px: IoU = 4 / (8 + 4 - 4 - 4) = 1.
    # pred 6 (car) lies on 3 VOID px + 1 road px: ignored. pred 7 (road) matches gt 2.
    pred = [[5, 5, 5, 5], [5, 5, 5, 5], [0, 6, 6, 6], [6, 7, 7, 7]]
    stat, res = per_class(
        gt, [seg(1, 1, 4), seg(2, 21, 4)], pred, [seg(5, 1), seg(6, 3), seg(7, 21)]
    )
    assert res["per_class"][1] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0})
    assert stat.fp.sum() == 0
    assert res["per_class"][21]["pq"] == pytest.approx(0.75)
    # Half on VOID is not enough (> 0.5 is needed).
    pred = [[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 6, 6], [6, 6, 7, 7]]
    stat, _ = per_class(gt, [seg(1, 1, 4), seg(2, 21, 4)], pred, [seg(5, 1), seg(6, 3), seg(7, 21)])
    assert stat.fp[1] == 1


def test_gt_area_comes_from_json_and_unlisted_gt_ids_are_ignored():
    gt = [[1, 1, 1, 1], [77, 77, 77, 77]]  # 77 is not listed: neither VOID nor a segment
    pred = [[5, 5, 5, 5], [5, 5, 5, 5]]
    # union = 8 + area(JSON) - 4 - 0: with area 4 IoU = 0.5 (no match); area 2 -> 4/6.
    stat, _ = per_class(gt, [seg(1, 1, 4)], pred, [seg(5, 1)])
    assert (stat.tp[0], stat.fp[0], stat.fn[0]) == (0, 1, 1)
    stat, _ = per_class(gt, [seg(1, 1, 2)], pred, [seg(5, 1)])
    assert stat.tp[0] == 1 and stat.iou[0] == pytest.approx(4 / 6)
    # Without "area" the pixel count is used.
    stat, _ = per_class(gt, [seg(1, 1)], pred, [seg(5, 1)])
    assert stat.tp[0] == 0


def test_no_category_with_segments():
    stat = PQStat(list(CATEGORIES))
    res = stat.results(CATEGORIES)
    assert res["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


ERROR_GT = np.array([[1, 1], [2, 2]])
ERROR_GT_SEGMENTS = [seg(1, 1, 2), seg(2, 21, 2)]


def check_error(pred, pred_segments, match):
    with pytest.raises(PanopticFormatError, match=match):
        pq_image(
            ERROR_GT, ERROR_GT_SEGMENTS, np.array(pred), pred_segments, list(CATEGORIES), "img7"
        )


def test_id_in_png_not_in_json():
    check_error([[1, 1], [3, 3]], [seg(1, 1)], r"img7: segment ids \[3\] are in the predicted")


def test_id_in_json_not_in_png():
    check_error([[1, 1], [0, 0]], [seg(1, 1), seg(4, 3)], r"img7: .*\[4\] are in segments")


def test_unknown_category():
    check_error([[1, 1], [0, 0]], [seg(1, 99)], r"img7: .*unknown category ids \[99\]")


def test_duplicated_ids():
    check_error([[1, 1], [0, 0]], [seg(1, 1), seg(1, 3)], r"img7: duplicated predicted")


def test_size_mismatch():
    check_error([[1, 1, 1]], [seg(1, 1)], r"img7: prediction has size \(1, 3\)")


@pytest.mark.parametrize("engine", ["pure", "auto"])
def test_missing_files_and_images(tmp_path, engine):
    rng = np.random.default_rng(0)
    paths = write_panoptic_files(str(tmp_path), [random_panoptic_pair(rng, 12, 10)] * 2)
    gt_json, gt_folder, pred_json, pred_folder = paths
    os.remove(os.path.join(pred_folder, "000001.png"))
    with pytest.raises(FileNotFoundError, match="image 1 .*000001.png"):
        pq_compute(gt_json, pred_json, gt_folder, pred_folder, engine=engine)
    with open(pred_json) as f:
        pred = json.load(f)
    pred["annotations"] = pred["annotations"][:1]
    with open(pred_json, "w") as f:
        json.dump(pred, f)
    with pytest.raises(PanopticFormatError, match="no prediction for the image with id 1"):
        pq_compute(gt_json, pred_json, gt_folder, pred_folder, engine=engine)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pq_compute(gt_json, pred_json, gt_folder, "nowhere")


def test_rgb_encoding_round_trip(tmp_path):
    ids = np.array([[0, 1, 255], [256, 65536, (1 << 24) - 1]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb[1, 1].tolist() == [0, 0, 1]
    assert (rgb_to_id(rgb) == ids).all()
    path = str(tmp_path / "a.png")
    Image.fromarray(rgb).save(path)
    assert (read_panoptic_png(path) == ids).all()
    Image.fromarray(np.dstack([rgb, np.full(ids.shape, 255, np.uint8)])).save(path)  # RGBA
    assert (read_panoptic_png(path) == ids).all()
    Image.fromarray(ids.astype(np.uint8)).save(path)
    with pytest.raises(ValueError, match="8-bit RGB"):
        read_panoptic_png(path)


def reference_pq(gt_json, gt_folder, pred_json, pred_folder):
    """cityscapesscripts' port of panopticapi, single process."""
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs

    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pred = {a["image_id"]: a for a in json.load(f)["annotations"]}
    categories = {c["id"]: c for c in gt["categories"]}
    pairs = [(a, pred[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        stat = cs.pq_compute_single_core(0, pairs, gt_folder, pred_folder, categories)
    return cs.average_pq(stat, categories)


def assert_same_results(ours, ref, tol=1e-9):
    for name in ("All", "Things", "Stuff"):
        assert ours[name]["n"] == ref[name]["n"], name
        for metric in ("pq", "sq", "rq"):
            assert abs(ours[name][metric] - ref[name][metric]) <= tol, (name, metric)
    assert set(ours["per_class"]) == set(ref["per_class"])
    for cat, values in ref["per_class"].items():
        for metric in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cat][metric] - values[metric]) <= tol, (cat, metric)


@pytest.fixture(scope="module")
def generated_files(tmp_path_factory):
    """22 random images (void, crowd, unmatched and tiny segments), sizes 17..63."""
    rng = np.random.default_rng(2024)
    cases = []
    for k in range(22):
        h, w = (int(v) for v in rng.integers(17, 64, size=2))
        cases.append(random_panoptic_pair(rng, h, w, small_ids=k % 3 == 0))
    root = str(tmp_path_factory.mktemp("pq_generated"))
    # Cityscapes-like string image ids for half of the images.
    image_ids = [f"city_{k:06d}" if k % 2 else k for k in range(len(cases))]
    return write_panoptic_files(root, cases, DEFAULT_CATEGORIES, image_ids)


@pytest.mark.parametrize("engine", ["pure", "hotcoco", "auto"])
def test_matches_cityscapesscripts_on_generated_images(generated_files, engine):
    if engine == "hotcoco":
        pytest.importorskip("hotcoco.panoptic")
    gt_json, gt_folder, pred_json, pred_folder = generated_files
    ref = reference_pq(gt_json, gt_folder, pred_json, pred_folder)
    ours = pq_compute(gt_json, pred_json, gt_folder, pred_folder, num_workers=1, engine=engine)
    assert_same_results(ours, ref)
    # The cases must exercise every rule, not only the easy ones.
    assert ref["Things"]["n"] > 0 and ref["Stuff"]["n"] > 0
    assert 0.1 < ref["All"]["pq"] < 0.9
    with open(gt_json) as f:
        gt = json.load(f)
    segments = [s for a in gt["annotations"] for s in a["segments_info"]]
    assert any(s["iscrowd"] for s in segments)
    assert any(s["area"] < 10 for s in segments)
    # Threads give the same numbers.
    threads = pq_compute(gt_json, pred_json, gt_folder, pred_folder, num_workers=2, engine=engine)
    assert_same_results(threads, ref)


def test_matches_cityscapesscripts_per_image(generated_files):
    """Image by image, so that errors cannot cancel out in the sums."""
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs

    gt_json, gt_folder, pred_json, pred_folder = generated_files
    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pred = {a["image_id"]: a for a in json.load(f)["annotations"]}
    categories = {c["id"]: c for c in gt["categories"]}
    for ann in gt["annotations"]:
        p = pred[ann["image_id"]]
        with contextlib.redirect_stdout(io.StringIO()):
            ref = cs.pq_compute_single_core(0, [(ann, p)], gt_folder, pred_folder, categories)
        ours = pq_image(
            read_panoptic_png(os.path.join(gt_folder, ann["file_name"])),
            ann["segments_info"],
            read_panoptic_png(os.path.join(pred_folder, p["file_name"])),
            p["segments_info"],
            list(categories),
        )
        for i, c in enumerate(ours.category_ids):
            r = ref[c]
            assert (ours.tp[i], ours.fp[i], ours.fn[i]) == (r.tp, r.fp, r.fn), (ann["image_id"], c)
            assert abs(ours.iou[i] - r.iou) < 1e-9


def test_matches_hotcoco(generated_files, tmp_path):
    hotcoco_panoptic = pytest.importorskip("hotcoco.panoptic")
    gt_json, gt_folder, pred_json, pred_folder = generated_files
    # hotcoco only takes integer image ids (so not Cityscapes'): renumber.
    renumbered = []
    for path in (gt_json, pred_json):
        with open(path) as f:
            data = json.load(f)
        for item in data.get("images", []):
            item["id"] = int(str(item["id"]).replace("city_", ""))
        for item in data["annotations"]:
            item["image_id"] = int(str(item["image_id"]).replace("city_", ""))
        renumbered.append(str(tmp_path / os.path.basename(path)))
        with open(renumbered[-1], "w") as f:
            json.dump(data, f)
    gt_json, pred_json = renumbered
    with contextlib.redirect_stdout(io.StringIO()):
        ref = hotcoco_panoptic.pq_compute(gt_json, pred_json, gt_folder, pred_folder)
    ours = pq_compute(gt_json, pred_json, gt_folder, pred_folder, engine="pure")
    for name in ("All", "Things", "Stuff"):
        for metric in ("pq", "sq", "rq"):
            assert ours[name][metric] == pytest.approx(ref[name][metric], abs=1e-9)


def test_default_folders_and_cli(generated_files, tmp_path, capsys):
    gt_json, gt_folder, pred_json, pred_folder = generated_files
    ours = pq_compute(gt_json, pred_json)  # folders: JSON paths without ".json"
    assert ours == pq_compute(gt_json, pred_json, gt_folder, pred_folder)
    out_file = str(tmp_path / "res.json")
    argv = ["--gt-json", gt_json, "--pred-json", pred_json, "--per-class", "--output", out_file]
    assert pq_main(argv) == 0
    printed = capsys.readouterr().out
    assert "Things" in printed and "person" in printed
    all_row = next(line for line in printed.splitlines() if line.startswith("All"))
    assert f"{100 * ours['All']['pq']:5.1f}" in all_row
    with open(out_file) as f:
        assert json.load(f)["All"]["pq"] == pytest.approx(ours["All"]["pq"])
    assert pq_main(["--gt-json", gt_json, "--pred-json", str(tmp_path / "none.json")]) == 1
    assert "none.json does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.uint8])
def test_pair_counts_equal_np_unique_over_pixels(dtype):
    """Counts over runs (repeated rows, long runs, speckle, random 24-bit ids) are the counts of
    panopticapi's np.unique over gt * 2**24 + pred."""
    rng = np.random.default_rng(4)
    high = 256 if dtype == np.uint8 else 1 << 24
    gt = rng.integers(0, 1 << 24, (50, 100)).astype(np.int32)
    pred = rng.integers(0, high, (50, 100)).astype(dtype)
    gt[:10], pred[:10] = 7, 9  # repeated rows
    gt[20, :50] = 9  # a run over a noisy prediction
    keys, counts = pair_counts(gt, pred)
    ref_keys, ref_counts = np.unique(gt.astype(np.int64) * (1 << 24) + pred, return_counts=True)
    assert (keys == ref_keys).all() and (counts == ref_counts).all()
    assert counts.sum() == gt.size
    empty = np.zeros((0, 3), np.int32)
    assert [len(a) for a in pair_counts(empty, empty)] == [0, 0]


def test_pair_counts_refuse_ids_that_are_not_rgb_encodable():
    ok = np.ones((2, 2), np.int32)
    with pytest.raises(ValueError, match="predicted segment ids must be non-negative"):
        pair_counts(ok, -ok)
    with pytest.raises(ValueError, match=r"ground-truth segment ids must be < 2\*\*24"):
        pair_counts(ok << 24, ok)
    with pytest.raises(ValueError, match="must be integers, got a float64 map"):
        pair_counts(ok, ok.astype(np.float64))
