"""The ``panoptic-pq`` command starts without torch and detectron2 (fresh processes), and prints
the same PQ as ``pq_compute`` (its library, :mod:`panoptic_pq`, imports no torch)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from panoptic_ext.evaluation import pq_compute
from tests.pq_fixtures import random_panoptic_pair, write_panoptic_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The console script's module run as the console script runs it: sys.argv[0] is the command.
RUN_AS_CONSOLE_SCRIPT = """
import runpy, sys
sys.argv = ["panoptic-pq"] + sys.argv[1:]
try:
    runpy.run_module("panoptic_pq.cli", run_name="__main__")
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "detectron2", "cv2") if m in sys.modules)
print("exit", code, "heavy modules:", heavy)
"""


@pytest.fixture(scope="module")
def pq_files(tmp_path_factory):
    rng = np.random.default_rng(0)
    cases = [random_panoptic_pair(rng, 40, 60) for _ in range(3)]
    return write_panoptic_files(str(tmp_path_factory.mktemp("pq_cli")), cases)


def _run(args, **env):
    return subprocess.run(
        [sys.executable] + args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, **env),
    )


def _all_row(out):
    return next(line for line in out.splitlines() if line.startswith("All"))


def _cli_args(pq_files, engine):
    gt_json, gt_folder, pred_json, pred_folder = pq_files
    return [
        "--gt-json",
        gt_json,
        "--pred-json",
        pred_json,
        "--gt-folder",
        gt_folder,
        "--pred-folder",
        pred_folder,
        "--engine",
        engine,
    ]


@pytest.mark.parametrize("engine", ["pure", "auto"])
def test_console_script_imports_neither_torch_nor_detectron2(pq_files, engine):
    result = _run(["-c", RUN_AS_CONSOLE_SCRIPT] + _cli_args(pq_files, engine))
    assert result.returncode == 0, result.stderr
    assert "exit 0 heavy modules: []" in result.stdout
    gt_json, gt_folder, pred_json, pred_folder = pq_files
    expected = pq_compute(gt_json, pred_json, gt_folder, pred_folder, engine="pure")
    assert expected["All"]["n"] > 0
    assert f"{100 * expected['All']['pq']:5.1f}" in _all_row(result.stdout)


def test_python_m_imports_neither_torch_nor_detectron2(pq_files):
    result = _run(
        ["-m", "panoptic_pq.cli"] + _cli_args(pq_files, "pure"),
        PYTHONPROFILEIMPORTTIME="1",
    )
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "panoptic_pq.panoptic_files" in imported
    assert not [m for m in imported if m.split(".")[0] in ("torch", "detectron2")]
    assert _all_row(result.stdout)


def test_cli_errors_name_the_file_without_torch(pq_files, tmp_path):
    missing = str(tmp_path / "none.json")
    result = _run(["-c", RUN_AS_CONSOLE_SCRIPT, "--gt-json", pq_files[0], "--pred-json", missing])
    assert "exit 1 heavy modules: []" in result.stdout
    assert f"panoptic-pq: error: prediction JSON file {missing} does not exist" in result.stderr


def test_ground_truth_without_segments_is_an_error_not_zeros(pq_files, tmp_path):
    import json

    gt_json = pq_files[0]
    with open(gt_json) as f:
        data = json.load(f)
    for ann in data["annotations"]:
        ann["segments_info"] = []
    empty = tmp_path / "empty_gt.json"
    empty.write_text(json.dumps(data))
    args = _cli_args(pq_files, "pure")
    args[1] = str(empty)
    result = _run(["-m", "panoptic_pq.cli", *args, "--gt-folder", pq_files[1]])
    assert result.returncode != 0
    assert f"{empty}: none of its 3 annotations has a segment" in result.stderr
    assert "All" not in result.stdout


def test_report_option_writes_the_page_without_torch(pq_files, tmp_path):
    out = tmp_path / "report"
    result = _run(
        ["-c", RUN_AS_CONSOLE_SCRIPT] + _cli_args(pq_files, "pure") + ["--report", str(out)]
    )
    assert "exit 0 heavy modules: []" in result.stdout, result.stderr
    assert (out / "index.html").is_file()
