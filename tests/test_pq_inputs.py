"""Bad PQ evaluation inputs fail before the evaluation with errors that name the file, the image
and the key (pq_compute, panoptic-pq): missing or string ``isthing``, float or missing
``category_id``, missing ``segments_info``, invalid JSON, an image annotated twice, an
``--output`` in a missing folder."""

import json
import os

import numpy as np
import pytest

from panoptic_ext.evaluation import PanopticFormatError, pq_compute
from panoptic_pq.cli import main as pq_main
from tests.pq_fixtures import random_panoptic_pair, write_panoptic_files

ENGINES = ["pure", "auto"]


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(3)
    cases = [random_panoptic_pair(rng, 20, 24) for _ in range(3)]
    return write_panoptic_files(str(tmp_path), cases)


def _edit(path, change):
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("isthing", ["<missing>", "1", 2, None])
def test_category_without_a_0_1_isthing_is_an_error(files, engine, isthing):
    gt_json, gt_folder, pred_json, pred_folder = files

    def change(data):
        if isthing == "<missing>":
            del data["categories"][0]["isthing"]
        else:
            data["categories"][0]["isthing"] = isthing

    _edit(gt_json, change)
    with pytest.raises(PanopticFormatError) as e:
        pq_compute(gt_json, pred_json, gt_folder, pred_folder, engine=engine)
    message = str(e.value)
    assert gt_json in message and "categories[0] ('person')" in message
    assert f"'isthing' is {'missing' if isthing == '<missing>' else repr(isthing)}" in message
    assert "expected 1 (thing) or 0 (stuff)" in message


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("which", ["gt", "pred"])
def test_float_or_missing_category_id_names_the_image_and_key(files, engine, which):
    gt_json, gt_folder, pred_json, pred_folder = files
    path = gt_json if which == "gt" else pred_json

    def to_float(data):
        seg = data["annotations"][1]["segments_info"][0]
        seg["category_id"] = seg["category_id"] + 0.5

    _edit(path, to_float)
    with pytest.raises(
        PanopticFormatError,
        match=r"annotations\[1\] \(image 1\): segments_info"
        r"\[0\]: category_id is \d+\.5; expected an integer",
    ) as e:
        pq_compute(gt_json, pred_json, gt_folder, pred_folder, engine=engine)
    assert path in str(e.value)
    _edit(path, lambda d: d["annotations"][1]["segments_info"][0].pop("category_id"))
    with pytest.raises(
        PanopticFormatError,
        match=r"\(image 1\): segments_info\[0\] has no " "'category_id'; expected an integer",
    ):
        pq_compute(gt_json, pred_json, gt_folder, pred_folder, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_annotation_without_segments_info_names_the_image(files, engine):
    gt_json, gt_folder, pred_json, pred_folder = files
    _edit(pred_json, lambda d: d["annotations"][2].pop("segments_info"))
    with pytest.raises(
        PanopticFormatError, match=r"annotations\[2\] \(image 2\) has no " r"\['segments_info'\]"
    ) as e:
        pq_compute(gt_json, pred_json, gt_folder, pred_folder, engine=engine)
    assert pred_json in str(e.value)
    _edit(pred_json, lambda d: d["annotations"][2].update(segments_info={"id": 1}))
    with pytest.raises(PanopticFormatError, match="'segments_info' is dict; expected a list"):
        pq_compute(gt_json, pred_json, gt_folder, pred_folder, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_image_annotated_twice_is_an_error(files, engine):
    gt_json, gt_folder, pred_json, pred_folder = files
    _edit(gt_json, lambda d: d["annotations"].append(dict(d["annotations"][0])))
    with pytest.raises(
        PanopticFormatError,
        match=r"annotations\[3\] \(image 0\): image 0 is "
        r"annotated twice \(also annotations\[0\]\)",
    ):
        pq_compute(gt_json, pred_json, gt_folder, pred_folder, engine=engine)


def test_invalid_json_names_the_file(files, capsys):
    gt_json, gt_folder, pred_json, pred_folder = files
    with open(pred_json, "w") as f:
        f.write('{"annotations": [')
    with pytest.raises(PanopticFormatError, match=f"prediction JSON file {pred_json} is not valid"):
        pq_compute(gt_json, pred_json, gt_folder, pred_folder)
    with pytest.raises(FileNotFoundError, match=f"ground-truth JSON file {gt_folder} does not"):
        pq_compute(gt_folder, pred_json, gt_folder, pred_folder)  # a folder given as JSON
    assert pq_main(["--gt-json", gt_json, "--pred-json", pred_json]) == 1
    assert f"{pred_json} is not valid JSON" in capsys.readouterr().err


def test_output_in_a_missing_folder_fails_before_the_evaluation(files, tmp_path, capsys):
    gt_json, gt_folder, pred_json, pred_folder = files
    out = str(tmp_path / "missing" / "res.json")
    argv = ["--gt-json", gt_json, "--pred-json", pred_json, "--gt-folder", gt_folder]
    assert pq_main(argv + ["--pred-folder", pred_folder, "--output", out]) == 1
    captured = capsys.readouterr()
    assert f"folder {os.path.dirname(out)} does not exist" in captured.err
    assert "Things" not in captured.out  # no table: nothing was evaluated
    out = str(tmp_path / "res.json")
    assert pq_main(argv + ["--pred-folder", pred_folder, "--output", out]) == 0
    with open(out) as f:
        assert set(json.load(f)) == {"All", "Things", "Stuff", "per_class"}


def test_hotcoco_errors_are_reported_by_the_pure_path(files):
    """A PNG problem found by hotcoco is reported with the image and both files."""
    pytest.importorskip("hotcoco.panoptic")
    gt_json, gt_folder, pred_json, pred_folder = files
    _edit(pred_json, lambda d: d["annotations"][1]["segments_info"].pop(0))
    with pytest.raises(PanopticFormatError) as e:
        pq_compute(gt_json, pred_json, gt_folder, pred_folder, engine="hotcoco")
    message = str(e.value)
    assert message.startswith("image 1 (gt ") and "000001.png" in message
    assert "in the predicted PNG but not in its segments_info" in message
