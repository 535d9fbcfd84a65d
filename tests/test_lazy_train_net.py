"""``train_net.py`` with a Python config: a few iterations of the quick config train, checkpoint
(metrics.json, TensorBoard events), resume and evaluate, with the YAML path's run checks."""

import glob
import math
import os
import runpy
import shutil
import sys

import pytest
import torch
import yaml
from detectron2.evaluation.testing import flatten_results_dict

from panoptic_ext.apps.train import LazyTrainer, load_lazy_config, main, parse_args, read_metrics
from panoptic_ext.apps.train.resume_config import ResumeConfigError
from panoptic_ext.apps.train.run_dir import OutputDirError
from tests.test_train_net import cpu_speedups_applied

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test")
MAX_ITER = 4  # eval_period and checkpointer.period are 2 in the quick config
LEARNED = "panoptic_ext.modeling.loss_weights.LearnedLossWeights"


@pytest.fixture(scope="module")
def dataset(tiny_synthetic):
    return tiny_synthetic


def _opts(dataset, output_dir, max_iter=MAX_ITER):
    return [
        # learned loss weights: model parameters that --resume must bring back too
        f"model.loss_weight_schedule._target_={LEARNED}",
        f"dataloader.train.dataset.names={dataset['train']}",
        f"dataloader.test.dataset.names={dataset['val']}",
        f"train.output_dir={output_dir}",
        f"train.max_iter={max_iter}",
    ]


def _run_train_net(argv):
    saved_argv = sys.argv
    sys.argv = ["train_net.py"] + argv
    try:
        runpy.run_path(os.path.join(ROOT, "train_net.py"), run_name="__main__")
    finally:
        sys.argv = saved_argv


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """output_dir of a 4-iteration run of ``python train_net.py --config-file X.py key=value``."""
    output_dir = tmp_path_factory.mktemp("train")
    _run_train_net(["--config-file", QUICK + ".py"] + _opts(dataset, output_dir))
    return output_dir


def test_outputs(trained):
    files = set(os.listdir(trained))
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth"} <= files
    assert {"last_checkpoint", "metrics.json", "config.yaml", "log.txt"} <= files
    assert glob.glob(os.path.join(trained, "events.out.tfevents.*"))
    checkpoint = torch.load(os.path.join(trained, "model_final.pth"), weights_only=False)
    assert checkpoint["iteration"] == MAX_ITER - 1
    assert checkpoint["trainer"]["_trainer"]["optimizer"]["state"]
    assert checkpoint["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == MAX_ITER
    assert checkpoint["trainer"]["hooks"]["ResumeState"]["seed"] == 42
    assert "loss_weight_schedule.log_variances" in checkpoint["model"]
    saved_config = yaml.safe_load(checkpoint["config"])  # what --resume compares with
    assert saved_config["train"]["output_dir"] == str(trained)
    assert saved_config["model"]["loss_weight_schedule"]["_target_"] == LEARNED

    metrics = read_metrics(os.path.join(trained, "metrics.json"))
    for iteration in (1, MAX_ITER):  # periodic evaluation and the final one
        assert {"panoptic_seg/PQ", "sem_seg/mIoU"} <= set(metrics[iteration])
    assert {"total_loss", "loss_sem_seg", "loss_mask", "lr", "lambda_semantic"} <= set(
        metrics[MAX_ITER - 1]
    )


def test_eval_only_reproduces_final_evaluation(dataset, trained, tmp_path):
    weights = os.path.join(trained, "model_final.pth")
    args = parse_args(
        ["--config-file", QUICK + ".py", "--eval-only"]
        + _opts(dataset, tmp_path)
        + [f"train.init_checkpoint={weights}"]
    )
    results = {k: float(v) for k, v in flatten_results_dict(main(args)).items()}
    final = read_metrics(os.path.join(trained, "metrics.json"))[MAX_ITER]
    expected = {k: v for k, v in final.items() if "/" in k}
    assert results.keys() == expected.keys()
    for key, value in expected.items():  # exactly equal (AP of absent object sizes is NaN)
        assert value == results[key] or (math.isnan(value) and math.isnan(results[key])), key
    # the same modules as the evaluation during training: train.cpu_speedups (True) in both
    evaluated, in_training = cpu_speedups_applied(tmp_path), cpu_speedups_applied(trained)
    assert evaluated and in_training and evaluated[0] == in_training[0]


def test_eval_only_needs_weights(dataset, tmp_path):
    args = parse_args(["--config-file", QUICK + ".py", "--eval-only"] + _opts(dataset, tmp_path))
    with pytest.raises(ValueError, match="train.init_checkpoint is empty"):
        main(args)


def test_resume(dataset, trained, tmp_path):
    output_dir = tmp_path / "resumed"
    shutil.copytree(trained, output_dir)
    checkpoint = torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=False)

    trainer = LazyTrainer(load_lazy_config(QUICK + ".py", _opts(dataset, output_dir, 6)))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == MAX_ITER
    state = trainer.model.state_dict()
    for key, value in checkpoint["model"].items():  # learned loss weights included
        torch.testing.assert_close(state[key], torch.as_tensor(value), rtol=0, atol=0)
    saved = checkpoint["trainer"]["_trainer"]["optimizer"]["state"]
    assert trainer.optimizer.state_dict()["state"].keys() == saved.keys()
    assert trainer.scheduler.last_epoch == MAX_ITER
    trainer.train()
    assert "panoptic_seg/PQ" in read_metrics(os.path.join(output_dir, "metrics.json"))[6]


def test_run_checks(dataset, trained, tmp_path):
    output_dir = tmp_path / "checks"
    shutil.copytree(trained, output_dir)
    opts = _opts(dataset, output_dir)
    with pytest.raises(OutputDirError, match="add --resume.*train.existing_output=move"):
        main(parse_args(["--config-file", QUICK + ".py"] + opts))
    with pytest.raises(ResumeConfigError, match="set train.max_iter above 4"):
        main(parse_args(["--config-file", QUICK + ".py", "--resume"] + opts))
    other = _opts(dataset, output_dir, 6) + ["optimizer.name=SGD"]
    with pytest.raises(ResumeConfigError, match="optimizer.name: 'AdamW' -> 'SGD'"):
        main(parse_args(["--config-file", QUICK + ".py", "--resume"] + other))


def test_class_counts_checked_against_the_dataset(dataset, tmp_path):
    opts = _opts(dataset, tmp_path) + ["model.sem_seg_head.num_classes=7"]
    with pytest.raises(ValueError, match=r"needs: model.sem_seg_head.num_classes=4"):
        main(parse_args(["--config-file", QUICK + ".py"] + opts))
    assert not os.listdir(tmp_path)  # nothing written


def test_amp_uses_detectron2_amp_trainer(dataset, tmp_path):
    cfg = load_lazy_config(QUICK + ".py", _opts(dataset, tmp_path) + ["train.amp.enabled=True"])
    # AMPTrainer's state: the grad scaler's, saved in checkpoints for --resume
    assert "grad_scaler" in LazyTrainer(cfg).state_dict()["_trainer"]


@pytest.mark.slow
def test_same_run_as_the_yaml_twin(dataset, trained, tmp_path):
    """The YAML twin with the same settings trains the same weights and metrics, bit for bit."""
    yaml_opts = [
        "MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME",
        "learned",
        "DATASETS.TRAIN",
        f"('{dataset['train']}',)",
        "DATASETS.TEST",
        f"('{dataset['val']}',)",
        "OUTPUT_DIR",
        str(tmp_path),
    ]
    _run_train_net(["--config-file", QUICK + ".yaml"] + yaml_opts)
    ours = torch.load(os.path.join(trained, "model_final.pth"), weights_only=False)["model"]
    theirs = torch.load(os.path.join(tmp_path, "model_final.pth"), weights_only=False)["model"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    a = read_metrics(os.path.join(trained, "metrics.json"))[MAX_ITER]
    b = read_metrics(os.path.join(tmp_path, "metrics.json"))[MAX_ITER]
    keys = [k for k in a if "/" in k]
    assert keys and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in keys)
