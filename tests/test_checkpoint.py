"""Checkpoints: atomic saves (also under SIGKILL), weights_only loads, clear errors on bad files
and on weights for other class counts, no checkpoint of non-finite weights; strict loading in
every weights format: Caffe2 / pycls / converted files (which detectron2 matches by name
heuristics and loads leniently) are checked like ``.pth`` files; a file that matches nothing is
an error; evaluation needs every weight of the model."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from panoptic_ext.apps.train.checkpoint import CheckpointError, PanopticCheckpointer


def _net(num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, num_classes, 1)
    )


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_is_atomic_and_tags_last_checkpoint(tmp_path):
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = PanopticCheckpointer(model, str(tmp_path), optimizer=opt)
    ckpt.save("model_0000001", iteration=1)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"

    other = _net(3)
    torch.nn.init.zeros_(other[0].weight)
    extra = PanopticCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert _same_weights(model, other)


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = _net()
    ckpt = PanopticCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000002")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


_KILLED_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys, torch
    from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    ckpt = PanopticCheckpointer(model, sys.argv[1])
    ckpt.save("model_0000001")
    real_save = torch.save

    def save_then_die(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush()
        f.truncate(f.tell() // 2)  # half of the file is on disk when the process is killed
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_then_die
    with torch.no_grad():
        model.weight.add_(1.0)
    ckpt.save("model_0000002")
    """)


def test_sigkill_during_save_leaves_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_DURING_SAVE, str(out)], capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    files = sorted(os.listdir(out))
    # The half-written file is a hidden temporary, never model_0000002.pth.
    assert "model_0000002.pth" not in files
    stale = [f for f in files if f.endswith(".tmp")]
    assert stale and all(f.startswith(".model_0000002.pth.") for f in stale)
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"

    torch.manual_seed(0)
    expected = torch.nn.Linear(64, 64)
    model = torch.nn.Linear(64, 64)
    torch.nn.init.zeros_(model.weight)
    PanopticCheckpointer(model, str(out)).resume_or_load("", resume=True)
    assert _same_weights(model, expected)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # cleaned up on resume


def test_refuses_to_save_non_finite_weights(tmp_path):
    model = _net()
    ckpt = PanopticCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError) as e:
        ckpt.save("model_0000002")
    assert "2.weight" in str(e.value) and "model_0000001.pth" in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


class Payload:
    """An arbitrary object: unpickling it means running code named by the file."""


def _write_bad_files(d):
    model = _net()
    good = d / "good.pth"
    torch.save({"model": model.state_dict()}, good)
    data = good.read_bytes()

    bad = {
        "text.pth": b"this is not a checkpoint\n",
        "empty.pth": b"",
        "truncated.pth": data[: len(data) // 2],
        "jpeg.pth": b"\xff\xd8\xff\xe0" + os.urandom(200),
        "random.pkl": os.urandom(200),
    }
    for name, content in bad.items():
        (d / name).write_bytes(content)
    torch.save([1, 2, 3], d / "list.pth")
    torch.save({"model": {"conv.weight": "not a tensor"}}, d / "strings.pth")
    torch.save({"model": {}}, d / "no_weights.pth")
    torch.save({"model": model.state_dict(), "payload": Payload()}, d / "pickled_object.pth")
    with open(d / "list.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    return {
        "text.pth": "not a readable PyTorch checkpoint",
        "empty.pth": "empty file",
        "truncated.pth": "not a readable PyTorch checkpoint",
        "jpeg.pth": "weights_only=True",
        "random.pkl": "not a readable detectron2 model-zoo checkpoint",
        "list.pth": "not a checkpoint: expected a dict",
        "strings.pth": "non-tensor entries ['conv.weight']",
        "no_weights.pth": "has no weights",
        "pickled_object.pth": "Payload",
        "list.pkl": "not a readable detectron2 model-zoo checkpoint",
        "missing.pth": "does not exist",
    }


def test_files_that_are_not_checkpoints(tmp_path):
    expected = _write_bad_files(tmp_path)
    for name, message in expected.items():
        path = str(tmp_path / name)
        with pytest.raises(CheckpointError) as e:
            PanopticCheckpointer(_net()).load(path)
        assert path in str(e.value) and message in str(e.value), (name, str(e.value))


def test_loads_pth_with_weights_only(tmp_path, monkeypatch):
    model = _net()
    torch.save({"model": model.state_dict(), "iteration": 3}, tmp_path / "m.pth")
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    other = _net()
    torch.nn.init.zeros_(other[0].weight)
    assert PanopticCheckpointer(other).load(str(tmp_path / "m.pth"))["iteration"] == 3
    assert calls == [True]
    assert _same_weights(model, other)


def test_model_zoo_pickle_still_loads(tmp_path):
    model = _net()
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    with open(tmp_path / "zoo.pkl", "wb") as f:
        pickle.dump({"model": weights, "__author__": "detectron2 test"}, f)
    other = _net()
    torch.nn.init.zeros_(other[0].weight)
    PanopticCheckpointer(other).load(str(tmp_path / "zoo.pkl"))
    assert _same_weights(model, other)


def test_other_class_counts_is_an_error_listing_keys_and_shapes(tmp_path):
    torch.save({"model": _net(num_classes=3).state_dict()}, tmp_path / "c3.pth")
    model = _net(num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        PanopticCheckpointer(model).load(str(tmp_path / "c3.pth"))
    msg = str(e.value)
    assert f"2 weights of the checkpoint {tmp_path / 'c3.pth'} do not fit the model" in msg
    assert "2.weight: (3, 4, 1, 1) in the checkpoint, (5, 4, 1, 1) in the model" in msg
    assert "2.bias: (3,) in the checkpoint, (5,) in the model" in msg
    assert "RUN.ALLOW_PARTIAL_WEIGHTS" in msg

    # Opt-in partial loading: the fitting weights are loaded, the others left as they were.
    model = _net(num_classes=5)
    PanopticCheckpointer(model, allow_partial=True).load(str(tmp_path / "c3.pth"))
    loaded = _net(num_classes=3).state_dict()
    assert torch.equal(model.state_dict()["0.weight"], loaded["0.weight"])
    assert torch.equal(model.state_dict()["2.weight"], before["2.weight"])


def test_numpy_state_dict_in_pth_is_refused_not_executed(tmp_path):
    # numpy arrays need the full unpickler: weights_only refuses them with a clear message.
    torch.save({"model": {"0.weight": np.zeros((4, 3, 3, 3))}}, tmp_path / "np.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        PanopticCheckpointer(_net()).load(str(tmp_path / "np.pth"))


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
