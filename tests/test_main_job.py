"""``tools/main_job.py`` (``make train``): interrupted in its final evaluation, ``--resume``
finishes the run (evaluation, final metrics, curves, pictures) without training again; bad
arguments and configs stop it before any work, with a message."""

import importlib.util
import json
import os

import pytest

from panoptic_ext.apps.train import Trainer
from tests.reliability_common import register_tiny_synthetic, unregister

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test")


def _main_job():
    spec = importlib.util.spec_from_file_location(
        "main_job", os.path.join(ROOT, "tools/main_job.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("main_job_data"))
    names = register_tiny_synthetic(root, "main_job_tiny", num_train=2, num_val=1)
    yield names
    unregister(*names.values())


def _opts(names, output_dir):
    return [
        "DATASETS.TRAIN", f"('{names['train']}',)", "DATASETS.TEST", f"('{names['val']}',)",
        "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "MODEL.BACKBONE.FREEZE_AT", "5",
        "TEST.EVAL_TASKS", "['panoptic_seg']", "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip


def test_resume_after_interrupted_final_evaluation_finishes_the_run(names, tmp_path, monkeypatch):
    main_job = _main_job()
    output_dir = tmp_path / "main_job"
    head = ["--config-file", QUICK + ".yaml", "--num-vis", "1"]

    def interrupted(cls, cfg, model, evaluators=None):
        raise KeyboardInterrupt  # Ctrl-C in the evaluation after the last iteration

    monkeypatch.setattr(Trainer, "test", classmethod(interrupted))
    with pytest.raises(KeyboardInterrupt):
        main_job.main(head + _opts(names, output_dir))
    monkeypatch.undo()
    assert (output_dir / "last_checkpoint").read_text() == "model_final.pth"
    assert not (output_dir / "final_metrics.json").exists()
    final = os.stat(output_dir / "model_final.pth").st_mtime_ns

    main_job.main(head + ["--resume"] + _opts(names, output_dir))
    summary = json.loads((output_dir / "final_metrics.json").read_text())
    assert summary["start_iter"] == 2 and summary["iterations"] == 2  # nothing trained again
    assert 0 <= summary["PQ"] <= 100
    assert os.stat(output_dir / "model_final.pth").st_mtime_ns == final
    assert os.path.getsize(output_dir / "training_curves.png") > 1000
    assert any(f.endswith("_pred_vs_gt.png") for f in os.listdir(output_dir / "visualizations"))
    assert "evaluating model_final.pth" in (output_dir / "log.txt").read_text()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num-vis", "-1"], "argument --num-vis: must be >= 0, got -1"),
        (["SOLVER.MAX_ITER", "-5"], "SOLVER.MAX_ITER = -5: must be > 0"),
        (["--config-file", QUICK + ".py"], "is a Python config (LazyConfig)"),
    ],
)
def test_bad_arguments_stop_before_any_work(names, tmp_path, capsys, args, message):
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        _main_job().main(args + ["OUTPUT_DIR", str(output_dir)])
    assert message in str(e.value) + capsys.readouterr().err
    assert not output_dir.exists()
