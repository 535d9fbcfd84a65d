"""Checkpoints: atomic saves (also under SIGKILL), weights_only loads, clear errors on bad files
and on weights for other class counts, no checkpoint of non-finite weights."""

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
