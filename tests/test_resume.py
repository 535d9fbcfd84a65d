"""Kill and resume: ``train_net.py`` killed with SIGKILL (during a checkpoint save, or from
outside at any moment) and restarted with ``--resume`` ends with the same weights and the same
final evaluation as an uninterrupted run (deterministic settings: fixed SEED, NUM_WORKERS 0, CPU).
"""

import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from detectron2.data import DatasetCatalog

from panoptic_ext.apps.train import read_metrics
from tests.reliability_common import register_tiny_synthetic, unregister

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "train_net.py")
QUICK_CONFIG = os.path.join(
    ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml"
)
PREFIX = "reliability_resume"
MAX_ITER = 4  # checkpoints after every iteration: model_0000000 ... model_0000002, model_final


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("reliability_resume_data"))
    names = register_tiny_synthetic(root, PREFIX, num_train=6, num_val=2)
    for name in names.values():
        DatasetCatalog.get(name)  # generate the files now, once
    yield root
    unregister(*names.values())


def _argv(output_dir, resume=False, max_iter=MAX_ITER):
    return (
        ["--config-file", QUICK_CONFIG]
        + (["--resume"] if resume else [])
        + [
            "DATASETS.TRAIN",
            f"('{PREFIX}_train',)",
            "DATASETS.TEST",
            f"('{PREFIX}_val',)",
            "SOLVER.MAX_ITER",
            str(max_iter),
            "SOLVER.CHECKPOINT_PERIOD",
            "1",
            "TEST.EVAL_PERIOD",
            "0",  # evaluation after the last iteration only
            "TEST.EVAL_TASKS",
            "['panoptic_seg', 'sem_seg']",
            "MODEL.BACKBONE.FREEZE_AT",
            "5",  # a frozen ResNet: 3x faster steps, smaller optimizer state
            "SEED",
            "3",
            "OUTPUT_DIR",
            str(output_dir),
        ]
    )


def _run_in_process(argv):
    saved = sys.argv
    sys.argv = ["train_net.py"] + argv
    try:
        runpy.run_path(TRAIN_NET, run_name="__main__")
    finally:
        sys.argv = saved


# A child process: registers the tiny dataset like the tests, optionally dies by SIGKILL in the
# middle of writing a given checkpoint, and runs train_net.py with the given arguments.
_CHILD = textwrap.dedent("""
    import os, runpy, signal, sys
    import torch
    from tests.reliability_common import register_tiny_synthetic

    root, prefix, kill_during, train_net = sys.argv[1:5]
    register_tiny_synthetic(root, prefix, num_train=6, num_val=2)
    real_save = torch.save

    def save_and_die(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if kill_during and kill_during in getattr(f, "name", ""):
            f.flush()
            f.truncate(f.tell() // 2)  # half of the checkpoint is on disk
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_and_die
    sys.argv = ["train_net.py"] + sys.argv[5:]
    runpy.run_path(train_net, run_name="__main__")
    """)


def _child(data_root, argv, kill_during=""):
    cmd = [sys.executable, "-c", _CHILD, data_root, PREFIX, kill_during, TRAIN_NET] + argv
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _final_weights(output_dir):
    return torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=True)["model"]


def _final_eval(output_dir):
    metrics = read_metrics(os.path.join(output_dir, "metrics.json"))
    return {k: v for k, v in metrics[MAX_ITER].items() if k.startswith("panoptic_seg/")}


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    _run_in_process(_argv(output_dir))
    return output_dir


def _assert_same_run(output_dir, reference):
    weights, expected = _final_weights(output_dir), _final_weights(reference)
    assert weights.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(weights[k], expected[k])]
    assert not different, f"weights differ from the uninterrupted run's: {different[:5]}"
    final_eval = _final_eval(output_dir)
    assert final_eval and final_eval == _final_eval(reference)


def test_sigkill_during_checkpoint_save_then_resume(data_root, uninterrupted, tmp_path):
    output_dir = tmp_path / "killed"
    proc = _child(data_root, _argv(output_dir), kill_during="model_0000001")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-3000:]

    # The half-written checkpoint is a hidden temporary; the tag names the previous, whole one.
    files = os.listdir(output_dir)
    assert "model_0000001.pth" not in files and "model_final.pth" not in files
    assert any(f.startswith(".model_0000001.pth.") for f in files)
    assert (output_dir / "last_checkpoint").read_text() == "model_0000000.pth"

    _run_in_process(_argv(output_dir, resume=True))
    assert not [f for f in os.listdir(output_dir) if f.endswith(".tmp")]
    log = (output_dir / "log.txt").read_text()
    assert "Resuming at iteration 1" in log
    _assert_same_run(output_dir, uninterrupted)


@pytest.mark.slow
def test_sigkill_from_outside_then_resume(data_root, uninterrupted, tmp_path):
    """The process is killed by another one as soon as it has written its second checkpoint,
    wherever it is then (training, evaluating, saving)."""
    output_dir = tmp_path / "killed_from_outside"
    last = output_dir / "last_checkpoint"
    proc = _child(data_root, _argv(output_dir))
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if last.exists() and last.read_text() == "model_0000001.pth":
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (output_dir / "model_final.pth").exists()

    _run_in_process(_argv(output_dir, resume=True))
    _assert_same_run(output_dir, uninterrupted)
