"""PanopticQualityEvaluator on awkward ground truth: PNGs in sub-folders with equal names, an
image annotated twice, a category without a 0/1 ``isthing``."""

import json
import os

import pytest
from detectron2.data import MetadataCatalog

from panoptic_ext.evaluation import PanopticFormatError, PanopticQualityEvaluator, pq_compute
from tests.test_evaluators import dataset, model_output, run  # noqa: F401  (fixture)


def _edit_gt(name, change):
    path = MetadataCatalog.get(name).panoptic_json
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return data


def test_saved_pngs_keep_sub_folders(dataset, tmp_path):  # noqa: F811
    """s1/x.png and s2/x.png: each prediction gets its own PNG, and the saved files re-score to
    the evaluator's numbers (they would not if one overwrote the other)."""
    name, gt, records = dataset
    root = MetadataCatalog.get(name).panoptic_root

    def move(data):
        for k, (ann, record) in enumerate(zip(data["annotations"], records)):
            new = os.path.join(f"s{k + 1}", "x.png")
            os.makedirs(os.path.join(root, f"s{k + 1}"))
            os.rename(os.path.join(root, ann["file_name"]), os.path.join(root, new))
            ann["file_name"] = new
            record["pan_seg_file_name"] = os.path.join(root, new)

    _edit_gt(name, move)
    ids_b, segs_b = gt[records[1]["image_id"]]
    outputs = [model_output(*gt[records[0]["image_id"]]), model_output(ids_b, segs_b, drop=(101,))]
    out_dir = str(tmp_path / "eval")
    res = run(PanopticQualityEvaluator(name, out_dir, save_pngs=True), records, outputs)
    png_dir = os.path.join(out_dir, "predictions")
    assert sorted(os.listdir(png_dir)) == ["s1", "s2"]
    assert os.listdir(os.path.join(png_dir, "s1")) == ["x.png"]
    with open(os.path.join(out_dir, "predictions.json")) as f:
        names = [a["file_name"] for a in json.load(f)["annotations"]]
    assert names == [os.path.join("s1", "x.png"), os.path.join("s2", "x.png")]
    meta = MetadataCatalog.get(name)
    saved = pq_compute(meta.panoptic_json, os.path.join(out_dir, "predictions.json"), root, png_dir)
    assert res["panoptic_seg"]["PQ"] == pytest.approx(100 * saved["All"]["pq"])
    assert res["panoptic_seg"]["PQ"] < 100


def test_image_annotated_twice_is_an_error(dataset):  # noqa: F811
    name, _, _ = dataset
    _edit_gt(name, lambda d: d["annotations"].append(dict(d["annotations"][0])))
    with pytest.raises(PanopticFormatError, match=r"annotations\[2\] .* is annotated twice"):
        PanopticQualityEvaluator(name)


@pytest.mark.parametrize("isthing", ["1", None])
def test_category_with_a_bad_isthing_is_an_error(dataset, isthing):  # noqa: F811
    name, _, _ = dataset
    _edit_gt(name, lambda d: d["categories"][1].update(isthing=isthing))
    with pytest.raises(
        PanopticFormatError,
        match=f"categories\\[1\\] \\('car'\\): 'isthing' is "
        f"{isthing!r}; expected 1 \\(thing\\) or 0 \\(stuff\\)",
    ):
        PanopticQualityEvaluator(name)
