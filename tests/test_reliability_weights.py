"""Strict loading in every weights format: Caffe2 / pycls / converted files (which detectron2
matches by name heuristics and loads leniently) are checked like ``.pth`` files; a file that
matches nothing is an error; evaluation needs every weight of the model."""

import pickle

import pytest
import torch

from panoptic_ext.apps.train.checkpoint import CheckpointError, PanopticCheckpointer


def _net(num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, num_classes, 1)
    )


def _write_caffe2_pkl(path, model):
    # No "model"/"__author__" keys: detectron2 reads it as a Caffe2 / Detectron file.
    with open(path, "wb") as f:
        pickle.dump({k: v.numpy() for k, v in model.state_dict().items()}, f)


def _write_pycls(path, model):
    torch.save({"model_state": model.state_dict()}, path)


@pytest.mark.parametrize("fmt", ["caffe2.pkl", "pycls.pyth"])
def test_heuristically_matched_weights_of_other_shapes_are_an_error(tmp_path, fmt):
    path = tmp_path / f"c3_{fmt}"
    (_write_caffe2_pkl if fmt.endswith("pkl") else _write_pycls)(path, _net(num_classes=3))
    model = _net(num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        PanopticCheckpointer(model).load(str(path))
    msg = str(e.value)
    assert f"2 weights of the checkpoint {path} do not fit the model" in msg, msg
    assert "2.weight: (3, 4, 1, 1) in the checkpoint, (5, 4, 1, 1) in the model" in msg
    assert "2.bias: (3,) in the checkpoint, (5,) in the model" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    # The opt-in still loads the fitting layers.
    model = _net(num_classes=5)
    PanopticCheckpointer(model, allow_partial=True).load(str(path))
    assert torch.equal(model.state_dict()["0.weight"], _net(3).state_dict()["0.weight"])


def test_matching_heuristics_still_load_fitting_files(tmp_path):
    _write_caffe2_pkl(tmp_path / "same.pkl", _net())
    model = _net()
    torch.nn.init.zeros_(model[0].weight)
    PanopticCheckpointer(model).load(str(tmp_path / "same.pkl"))
    assert torch.equal(model[0].weight, _net()[0].weight)


@pytest.mark.parametrize("name", ["other.pkl", "other.pth"])
def test_weights_that_match_nothing_are_an_error(tmp_path, name):
    other = {"head.fc.weight": torch.zeros(2, 2), "head.fc.bias": torch.zeros(2)}
    if name.endswith(".pkl"):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({k: v.numpy() for k, v in other.items()}, f)
    else:
        torch.save({"model": other}, tmp_path / name)
    with pytest.raises(CheckpointError) as e:
        PanopticCheckpointer(_net()).load(str(tmp_path / name))
    msg = str(e.value)
    assert str(tmp_path / name) in msg and "none of the 2 weights" in msg, msg
    assert "head.fc" in msg and "0.weight" in msg


def test_evaluation_needs_every_weight(tmp_path):
    state = _net().state_dict()
    del state["2.weight"], state["2.bias"]
    torch.save({"model": state}, tmp_path / "partial.pth")
    # Training from it is fine (e.g. a backbone-only checkpoint) ...
    PanopticCheckpointer(_net()).load(str(tmp_path / "partial.pth"))
    # ... evaluating it is not.
    with pytest.raises(CheckpointError) as e:
        PanopticCheckpointer(_net(), require_complete=True).load(str(tmp_path / "partial.pth"))
    msg = str(e.value)
    assert "lacks 2 of the model's" in msg and "2.bias, 2.weight" in msg, msg
    assert "ALLOW_PARTIAL_WEIGHTS" in msg
    PanopticCheckpointer(_net(), require_complete=True, allow_partial=True).load(
        str(tmp_path / "partial.pth")
    )
