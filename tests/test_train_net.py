"""End-to-end training through ``train_net.py`` on a tiny synthetic split: periodic evaluation,
checkpoints, metrics.json, ``--resume`` and ``--eval-only`` reproducing the final evaluation with
the same modules (TEST.CPU_SPEEDUPS), and the training curves drawn from metrics.json."""

import ast
import glob
import json
import math
import os
import re
import runpy
import shutil
import sys

import pytest
import torch
from detectron2.evaluation.testing import flatten_results_dict
from PIL import Image

from panoptic_ext.apps.train import (
    Trainer,
    get_panoptic_cfg,
    main,
    parse_args,
    plot_training_curves,
    read_metrics,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(
    ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml"
)
MAX_ITER = 4  # EVAL_PERIOD and CHECKPOINT_PERIOD are 2 in the quick config


@pytest.fixture(scope="module")
def dataset(tiny_synthetic):
    return tiny_synthetic


def _opts(dataset, output_dir, max_iter=MAX_ITER):
    return [
        # learned loss weights: model parameters that --resume must bring back too
        "MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME",
        "learned",
        "DATASETS.TRAIN",
        f"('{dataset['train']}',)",
        "DATASETS.TEST",
        f"('{dataset['val']}',)",
        "OUTPUT_DIR",
        str(output_dir),
        "SOLVER.MAX_ITER",
        str(max_iter),
    ]


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """OUTPUT_DIR of a 4-iteration run of ``python train_net.py --config-file ... KEY VALUE``."""
    output_dir = tmp_path_factory.mktemp("train")
    argv = ["train_net.py", "--config-file", QUICK_CONFIG] + _opts(dataset, output_dir)
    saved_argv = sys.argv
    sys.argv = argv
    try:
        runpy.run_path(os.path.join(ROOT, "train_net.py"), run_name="__main__")
    finally:
        sys.argv = saved_argv
    return output_dir


def cpu_speedups_applied(output_dir):
    """The CPU speed-ups that the runs logging to ``output_dir/log.txt`` applied: per
    evaluation, modules changed per speed-up (0 when already applied)."""
    log = (output_dir / "log.txt").read_text()
    return [ast.literal_eval(m) for m in re.findall(r"speed-ups applied: (\{.*\})", log)]


def _final_eval(metrics):
    """The evaluation results that training wrote for its last iteration."""
    return {k: v for k, v in metrics[MAX_ITER].items() if "/" in k}


def test_outputs(trained):
    files = set(os.listdir(trained))
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth"} <= files
    assert {"last_checkpoint", "metrics.json", "config.yaml", "log.txt"} <= files
    assert glob.glob(os.path.join(trained, "events.out.tfevents.*"))
    with open(os.path.join(trained, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"

    checkpoint = torch.load(os.path.join(trained, "model_final.pth"), weights_only=False)
    assert checkpoint["iteration"] == MAX_ITER - 1
    # model, optimizer and LR scheduler (detectron2 v0.6 itself leaves out the optimizer)
    assert checkpoint["trainer"]["_trainer"]["optimizer"]["state"]
    assert checkpoint["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == MAX_ITER

    metrics = read_metrics(os.path.join(trained, "metrics.json"))
    # periodic evaluation after iteration 2 (stored at iteration 1) and the final one
    for iteration in (1, MAX_ITER):
        assert {"panoptic_seg/PQ", "panoptic_seg/PQ_th", "panoptic_seg/PQ_st"} <= set(
            metrics[iteration]
        )
    losses = metrics[MAX_ITER - 1]
    assert {"total_loss", "loss_sem_seg", "loss_mask", "loss_cls", "lr"} <= set(losses)


def test_eval_only_reproduces_final_evaluation(dataset, trained, tmp_path):
    weights = os.path.join(trained, "model_final.pth")
    args = parse_args(
        ["--config-file", QUICK_CONFIG, "--eval-only"]
        + _opts(dataset, tmp_path)
        + ["MODEL.WEIGHTS", weights]
    )
    results = {k: float(v) for k, v in flatten_results_dict(main(args)).items()}
    expected = _final_eval(read_metrics(os.path.join(trained, "metrics.json")))
    assert results.keys() == expected.keys()
    for key, value in expected.items():  # exactly equal (AP of absent object sizes is NaN)
        assert value == results[key] or (math.isnan(value) and math.isnan(results[key])), key
    # the same modules as the evaluation during training: TEST.CPU_SPEEDUPS (True) in both
    evaluated, in_training = cpu_speedups_applied(tmp_path), cpu_speedups_applied(trained)
    assert evaluated and in_training and evaluated[0] == in_training[0]
    assert sum(evaluated[0].values()) > 0
    assert not os.path.exists(tmp_path / "config.yaml")  # an evaluation writes no config


def test_eval_only_report_has_the_evaluators_pq(dataset, trained, tmp_path):
    weights = os.path.join(trained, "model_final.pth")
    args = parse_args(
        ["--config-file", QUICK_CONFIG, "--eval-only", "--report"]
        + _opts(dataset, tmp_path)
        + ["MODEL.WEIGHTS", weights]
    )
    results = main(args)
    page = tmp_path / "report" / dataset["val"] / "index.html"
    assert page.is_file()
    numbers = json.loads((page.parent / "report.json").read_text())
    assert numbers["results"]["All"]["pq"] * 100 == pytest.approx(results["panoptic_seg"]["PQ"])
    with pytest.raises(ValueError, match="--report goes with --eval-only"):
        main(parse_args(["--config-file", QUICK_CONFIG, "--report"] + _opts(dataset, tmp_path)))


def test_cpu_speedups_off_in_training_and_eval_only(dataset, trained, tmp_path):
    opts = _opts(dataset, tmp_path, max_iter=1) + ["TEST.EVAL_PERIOD", "0"]
    opts += ["TEST.CPU_SPEEDUPS", "False"]
    results = main(parse_args(["--config-file", QUICK_CONFIG] + opts))  # evaluates at the end
    assert "panoptic_seg" in results
    weights = str(trained / "model_final.pth")
    eval_only = ["--config-file", QUICK_CONFIG, "--eval-only", "MODEL.WEIGHTS", weights]
    assert "panoptic_seg" in main(parse_args(eval_only + opts))
    assert cpu_speedups_applied(tmp_path) == []


def test_resume(dataset, trained, tmp_path):
    output_dir = tmp_path / "resumed"
    shutil.copytree(trained, output_dir)
    checkpoint = torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=False)

    cfg = get_panoptic_cfg(QUICK_CONFIG, _opts(dataset, output_dir, max_iter=MAX_ITER + 2))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == MAX_ITER
    # model (learned loss weights included), optimizer and LR scheduler come back
    state = trainer.model.state_dict()
    assert state.keys() == checkpoint["model"].keys()
    learned = checkpoint["model"]["loss_weight_schedule.log_variances"]
    assert not torch.equal(learned, torch.tensor([0.0, math.log(2.0)]))  # trained, not initial
    for key, value in checkpoint["model"].items():
        torch.testing.assert_close(state[key], torch.as_tensor(value), rtol=0, atol=0)
    saved_optimizer = checkpoint["trainer"]["_trainer"]["optimizer"]["state"]
    optimizer_state = trainer.optimizer.state_dict()["state"]
    assert optimizer_state.keys() == saved_optimizer.keys()
    for key, saved in saved_optimizer.items():
        for name, value in saved.items():
            torch.testing.assert_close(optimizer_state[key][name], value, rtol=0, atol=0)
    assert trainer.scheduler.last_epoch == MAX_ITER

    trainer.train()
    resumed = torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=False)
    assert resumed["iteration"] == MAX_ITER + 1
    metrics = read_metrics(os.path.join(output_dir, "metrics.json"))
    assert "panoptic_seg/PQ" in metrics[MAX_ITER + 2]
    assert _final_eval(metrics) == _final_eval(
        read_metrics(os.path.join(trained, "metrics.json"))
    )  # the first run's entries are kept


def test_training_curves(tmp_path):
    path = tmp_path / "metrics.json"
    rows = [
        {"iteration": 19, "total_loss": 3.0, "loss_mask": 1.0, "lr": 0.1},
        {"iteration": 19, "panoptic_seg/PQ": 10.0, "panoptic_seg/PQ_th": 5.0},
        {"iteration": 39, "total_loss": 2.0, "loss_mask": 0.5},
        # a resumed run writes iteration 39 again: its values win
        {"iteration": 39, "total_loss": 1.5, "panoptic_seg/PQ": 20.0, "sem_seg/mIoU": 40.0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + '{"iteration": 4')
    metrics = read_metrics(str(path))
    assert list(metrics) == [19, 39]
    assert metrics[39] == {
        "total_loss": 1.5,
        "loss_mask": 0.5,
        "panoptic_seg/PQ": 20.0,
        "sem_seg/mIoU": 40.0,
    }
    assert metrics[19]["panoptic_seg/PQ_th"] == 5.0
    out = plot_training_curves(str(path), str(tmp_path / "plots" / "curves.png"))
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > image.size[1] > 100
