"""Checkpoint files: retention of periodic checkpoints, clear errors for a full disk or Ctrl-C
during a save, temporary files of a live save kept, and a timeout for stalled downloads."""

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from panoptic_ext.apps.train.checkpoint import (
    CheckpointError,
    CheckpointSaveError,
    PanopticCheckpointer,
)
from panoptic_ext.config import add_panoptic_ext_config
from tests.common import get_model_zoo_cfg


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 3, 1))


def test_periodic_checkpoints_beyond_max_to_keep_are_deleted(tmp_path):
    (tmp_path / "model_0000001.pth").write_bytes(b"from before a resume")
    ckpt = PanopticCheckpointer(_net(), str(tmp_path), max_to_keep=2)
    for it in (3, 5, 7):
        ckpt.save(f"model_{it:07d}", iteration=it)
    ckpt.save("model_final", iteration=8)
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000005.pth",
        "model_0000007.pth",
        "model_final.pth",
    ]
    # 0 keeps every checkpoint.
    keep_all = PanopticCheckpointer(_net(), str(tmp_path / "all"), max_to_keep=0)
    for it in range(4):
        keep_all.save(f"model_{it:07d}")
    assert len(os.listdir(tmp_path / "all")) == 5


def test_default_config_keeps_a_bounded_number():
    cfg = get_model_zoo_cfg()
    add_panoptic_ext_config(cfg)
    assert 0 < cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP <= 5


def _save_failing_after(monkeypatch, exc: BaseException) -> None:
    """torch.save writes through a file whose writes fail after the first few."""
    real_save = torch.save

    class Failing:
        def __init__(self, f):
            self.f, self.calls = f, 0

        def write(self, data):
            self.calls += 1
            if self.calls > 2:
                raise exc
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real_save(obj, Failing(f), *a, **k))


def test_full_disk_during_save_names_the_cause_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    ckpt = PanopticCheckpointer(_net(), str(tmp_path))
    ckpt.save("model_0000001")
    _save_failing_after(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(CheckpointSaveError) as e:
        ckpt.save("model_0000002")
    msg = str(e.value)
    assert "No space left on device" in msg and "MB free" in msg, msg
    assert str(tmp_path / "model_0000002.pth") in msg
    assert "last_checkpoint still names" in msg and "model_0000001.pth" in msg
    assert "inline_container" not in msg
    assert e.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


def test_ctrl_c_during_torch_save_is_a_keyboard_interrupt_naming_the_file(tmp_path, monkeypatch):
    ckpt = PanopticCheckpointer(_net(), str(tmp_path))
    ckpt.save("model_0000001")
    _save_failing_after(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt) as e:
        ckpt.save("model_0000002")
    assert "interrupted while writing" in str(e.value) and "model_0000002.pth" in str(e.value)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


def test_resume_keeps_the_temporary_file_of_a_save_still_running(tmp_path):
    ckpt = PanopticCheckpointer(_net(), str(tmp_path))
    ckpt.save("model_0000001")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_tmp = tmp_path / f".model_0000002.pth.{live.pid}.tmp"
        dead_tmp = tmp_path / f".model_0000002.pth.{dead.pid}.tmp"
        live_tmp.write_bytes(b"being written")
        dead_tmp.write_bytes(b"left by a kill")
        PanopticCheckpointer(_net(), str(tmp_path)).resume_or_load("", resume=True)
        assert live_tmp.exists() and not dead_tmp.exists()
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()


@pytest.fixture
def stalling_server():
    """A TCP server that accepts connections and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


def test_download_from_a_stalled_server_times_out(stalling_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    url = f"{stalling_server}/model_final.pth"
    raised = []

    def load():
        try:
            PanopticCheckpointer(_net(), download_timeout=0.5).load(url)
        except Exception as e:  # checked below
            raised.append(e)

    start = time.monotonic()
    thread = threading.Thread(target=load, daemon=True)  # a hang must fail the test, not block it
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the download hangs"
    assert time.monotonic() - start < 30
    assert raised and isinstance(raised[0], CheckpointError), raised
    msg = str(raised[0])
    assert url in msg and "no data for 0.5 s" in msg and "DOWNLOAD_TIMEOUT" in msg, msg
    assert socket.getdefaulttimeout() is None  # restored
