"""OUTPUT_DIR safety: an OS lock naming its holder (released when its process dies, however it
dies), and a new training that refuses to replace a previous run, or moves it aside / deletes it
when asked."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from panoptic_ext.apps.train.run_dir import (
    LOCK_NAME,
    OutputDirBusyError,
    OutputDirError,
    OutputDirLock,
    prepare_output_dir,
)
from panoptic_ext.config import add_panoptic_ext_config
from tests.common import get_model_zoo_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from panoptic_ext.apps.train.run_dir import OutputDirLock
    lock = OutputDirLock(sys.argv[1]).acquire()  # held while the object lives
    print("locked", flush=True)
    time.sleep(120)
    """)


def _cfg(output_dir, existing="refuse"):
    cfg = get_model_zoo_cfg()
    add_panoptic_ext_config(cfg)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.RUN.EXISTING_OUTPUT = existing
    return cfg


@pytest.fixture
def lock_holder(tmp_path):
    """Another process holding OUTPUT_DIR's lock."""
    output_dir = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(output_dir)], stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout.readline().strip() == b"locked"
    yield output_dir, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_second_run_is_refused_naming_the_holder(lock_holder):
    output_dir, proc = lock_holder
    for resume, eval_only in ((False, False), (True, False), (False, True)):
        with pytest.raises(OutputDirBusyError) as e:
            prepare_output_dir(_cfg(output_dir), resume=resume, eval_only=eval_only)
        msg = str(e.value)
        assert f"process {proc.pid} on" in msg and "is in use by another run" in msg, msg
        assert "set another OUTPUT_DIR" in msg
    assert os.listdir(output_dir) == [LOCK_NAME]  # nothing written

    # Killed: the OS released its lock, and the next run takes it.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock, _ = prepare_output_dir(_cfg(output_dir))
    assert lock.held and f"process {os.getpid()} on" in (output_dir / LOCK_NAME).read_text()
    with pytest.raises(OutputDirBusyError):  # held now, also against this process
        OutputDirLock(str(output_dir)).acquire()
    lock.release()
    assert not (output_dir / LOCK_NAME).exists()
    with OutputDirLock(str(output_dir)) as again:
        assert again.held


def _previous_run(output_dir):
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "model_0000099.pth").write_bytes(b"weights")
    (output_dir / "model_final.pth").write_bytes(b"final weights")
    (output_dir / "last_checkpoint").write_text("model_final.pth")
    (output_dir / "metrics.json").write_text('{"iteration": 99}\n')
    (output_dir / "log.txt").write_text("old log\n")
    return sorted(os.listdir(output_dir))


def test_new_run_refuses_to_replace_a_previous_run(tmp_path):
    output_dir = tmp_path / "run"
    files = _previous_run(output_dir)
    with pytest.raises(OutputDirError) as e:
        prepare_output_dir(_cfg(output_dir))
    msg = str(e.value)
    assert str(output_dir) in msg and "last_checkpoint -> model_final.pth" in msg, msg
    assert "add --resume" in msg and "RUN.EXISTING_OUTPUT move" in msg
    assert sorted(os.listdir(output_dir)) == files  # untouched, and the lock released


def test_previous_run_moved_aside(tmp_path):
    output_dir = tmp_path / "run"
    files = _previous_run(output_dir)
    lock, messages = prepare_output_dir(_cfg(output_dir, "move"))
    assert os.listdir(output_dir) == [LOCK_NAME]
    moved = [d for d in os.listdir(tmp_path) if d.startswith("run.previous-")]
    assert len(moved) == 1 and sorted(os.listdir(tmp_path / moved[0])) == files
    assert (tmp_path / moved[0] / "model_final.pth").read_bytes() == b"final weights"
    assert moved[0] in messages[0] and "--resume" in messages[0]
    lock.release()


def test_previous_run_overwritten_only_when_asked(tmp_path):
    output_dir = tmp_path / "run"
    _previous_run(output_dir)
    lock, messages = prepare_output_dir(_cfg(output_dir, "overwrite"))
    assert sorted(os.listdir(output_dir)) == [LOCK_NAME, "log.txt"]
    assert "deleted it" in messages[0]
    lock.release()


def test_main_job_run_again_keeps_the_previous_run(tmp_path, monkeypatch):
    """`make train` twice: the second run moves the first one's results aside, deleting none."""
    import runpy

    from tests.reliability_common import register_tiny_synthetic, unregister

    names = register_tiny_synthetic(str(tmp_path), "reliability_main_job", num_train=2, num_val=1)
    output_dir = tmp_path / "main_job"
    argv = [
        "main_job.py",
        *(
            "--config-file",
            os.path.join(
                ROOT, "configs/quick_schedules/" "panoptic_fpn_R_18_synthetic_instant_test.yaml"
            ),
        ),
        *("--num-vis", "1"),
        *("DATASETS.TRAIN", f"('{names['train']}',)", "DATASETS.TEST", f"('{names['val']}',)"),
        *("SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0", "MODEL.BACKBONE.FREEZE_AT", "5"),
        *("TEST.EVAL_TASKS", "['panoptic_seg']", "OUTPUT_DIR", str(output_dir)),
    ]
    try:
        for _ in range(2):
            monkeypatch.setattr(sys, "argv", argv)
            runpy.run_path(os.path.join(ROOT, "tools/main_job.py"), run_name="__main__")
    finally:
        unregister(*names.values())
    moved = [d for d in os.listdir(tmp_path) if d.startswith("main_job.previous-")]
    assert len(moved) == 1, os.listdir(tmp_path)
    for run in (output_dir, tmp_path / moved[0]):
        files = os.listdir(run)
        assert "model_final.pth" in files and "final_metrics.json" in files, files
    assert not (output_dir / LOCK_NAME).exists()
