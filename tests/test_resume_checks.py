"""``train_net.py`` runs that would lose work or silently do something else: a new training over a
finished run, ``--resume`` with a changed config (listed, applied or refused), with no iteration
left, with another optimizer or another model, or an empty ``last_checkpoint``, and
``--eval-only`` without weights. A command that is refused, or only evaluates, leaves the
finished run's files (``config.yaml`` included) as they were."""

import os
import shutil

import pytest
import torch
from detectron2.solver import build_lr_scheduler

from panoptic_ext.apps.train import get_panoptic_cfg, main, parse_args, read_metrics
from panoptic_ext.apps.train.checkpoint import CheckpointError
from panoptic_ext.apps.train.config_check import ConfigError
from panoptic_ext.apps.train.resume_config import ResumeConfigError
from panoptic_ext.apps.train.run_dir import LOCK_NAME, OutputDirError
from tests.reliability_common import register_tiny_synthetic, unregister

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(
    ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml"
)
PREFIX = "reliability_resume_config"


def _argv(output_dir, *opts, resume=False, eval_only=False):
    return (
        ["--config-file", QUICK_CONFIG]
        + (["--resume"] if resume else [])
        + (["--eval-only"] if eval_only else [])
        + ["DATASETS.TRAIN", f"('{PREFIX}_train',)", "DATASETS.TEST", "()"]
        + ["SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "0", "SEED", "3"]
        + ["MODEL.BACKBONE.FREEZE_AT", "5", "OUTPUT_DIR", str(output_dir)]
        + list(opts)
    )


def _run(output_dir, *opts, **flags):
    return main(parse_args(_argv(output_dir, *opts, **flags)))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """OUTPUT_DIR of a finished 2-iteration run (AdamW, BASE_LR 0.001)."""
    root = str(tmp_path_factory.mktemp("resume_config_data"))
    names = register_tiny_synthetic(root, PREFIX, num_train=4, num_val=1)
    output_dir = tmp_path_factory.mktemp("finished")
    _run(output_dir, "SOLVER.MAX_ITER", "2")
    yield output_dir
    unregister(*names.values())


@pytest.fixture
def run_copy(finished_run, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run, output_dir)
    return output_dir


def _snapshot(output_dir):
    return {
        name: (output_dir / name).read_bytes()
        for name in sorted(os.listdir(output_dir))
        if os.path.isfile(output_dir / name) and name != "log.txt"
    }


def test_new_training_over_a_finished_run_is_refused(run_copy):
    before = _snapshot(run_copy)
    with pytest.raises(OutputDirError) as e:
        _run(run_copy, "SOLVER.MAX_ITER", "2")
    assert "--resume" in str(e.value) and "EXISTING_OUTPUT" in str(e.value)
    assert _snapshot(run_copy) == before  # checkpoints, metrics.json, config.yaml untouched
    assert not (run_copy / LOCK_NAME).exists()


@pytest.mark.parametrize("max_iter, says", [("2", "the run is complete"), ("1", "is below it")])
def test_resume_with_no_iteration_left_is_an_error(run_copy, max_iter, says):
    before = _snapshot(run_copy)
    with pytest.raises(ResumeConfigError) as e:
        _run(run_copy, "SOLVER.MAX_ITER", max_iter, resume=True)
    msg = str(e.value)
    assert "model_final.pth has finished 2 iterations" in msg and says in msg, msg
    assert "set SOLVER.MAX_ITER above 2" in msg
    assert _snapshot(run_copy) == before


_TO_SGD = ("SOLVER.MAX_ITER", "4", "SOLVER.OPTIMIZER", "SGD")


def test_resume_with_another_optimizer_is_refused(run_copy):
    with pytest.raises(ResumeConfigError) as e:
        _run(run_copy, *_TO_SGD, resume=True)
    assert "SOLVER.OPTIMIZER: 'AdamW' -> 'SGD'" in str(e.value), str(e.value)


def test_resume_of_a_checkpoint_without_saved_config_checks_the_optimizer_state(run_copy):
    path = run_copy / "model_final.pth"
    data = torch.load(path, weights_only=True)
    del data["config"]  # as written before configs were saved in checkpoints
    torch.save(data, path)
    os.remove(run_copy / "config.yaml")
    with pytest.raises(CheckpointError) as e:
        _run(run_copy, *_TO_SGD, resume=True)
    msg = str(e.value)
    assert "--resume cannot continue" in msg and "another optimizer's" in msg, msg
    assert "momentum" in msg and "SOLVER.OPTIMIZER" in msg


def test_resume_with_another_model_is_refused_even_with_partial_weights(run_copy):
    before = _snapshot(run_copy)
    with pytest.raises(CheckpointError) as e:
        _run(
            run_copy,
            *("SOLVER.MAX_ITER", "4", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "64"),
            *("RUN.ALLOW_PARTIAL_WEIGHTS", "True"),
            resume=True,
        )
    msg = str(e.value)
    assert "--resume cannot continue the run of" in msg and "sem_seg_head" in msg, msg
    assert f"MODEL.WEIGHTS {run_copy / 'model_final.pth'}" in msg
    after = _snapshot(run_copy)  # (the trainer's writers may have opened a new events file)
    assert {k: after[k] for k in before} == before  # config.yaml is not the refused command's


def test_eval_only_resume_leaves_the_run_as_it_was(run_copy):
    before = _snapshot(run_copy)
    _run(run_copy, "SOLVER.BASE_LR", "0.5", "SOLVER.MAX_ITER", "9", resume=True, eval_only=True)
    assert _snapshot(run_copy) == before  # config.yaml included


def test_empty_last_checkpoint_is_named(run_copy):
    (run_copy / "last_checkpoint").write_text("")
    for flags in ({"resume": True}, {"resume": True, "eval_only": True}):
        with pytest.raises(CheckpointError) as e:
            _run(run_copy, "SOLVER.MAX_ITER", "4", **flags)
        msg = str(e.value)
        assert f"{run_copy / 'last_checkpoint'} is empty" in msg, msg
        assert "model_final.pth" in msg and "does not exist" not in msg


def test_resume_lists_and_applies_config_changes(run_copy):
    _run(
        run_copy,
        *("SOLVER.MAX_ITER", "4", "SOLVER.BASE_LR", "0.004"),
        *("SOLVER.CHECKPOINT_MAX_TO_KEEP", "1"),
        resume=True,
    )
    log = (run_copy / "log.txt").read_text()
    # 4: the copied run's OUTPUT_DIR differs too.
    assert "4 config change(s) from the run's config" in log, log[-3000:]
    assert "SOLVER.BASE_LR: 0.001 -> 0.004 (applied)" in log
    assert "SOLVER.MAX_ITER: 2 -> 4 (applied)" in log
    # The learning rate of the resumed iterations follows the new BASE_LR and MAX_ITER.
    cfg = get_panoptic_cfg(QUICK_CONFIG, ["SOLVER.MAX_ITER", "4", "SOLVER.BASE_LR", "0.004"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.004)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    expected = optimizer.param_groups[0]["lr"]
    assert read_metrics(str(run_copy / "metrics.json"))[3]["lr"] == pytest.approx(expected, 1e-6)
    # One periodic checkpoint kept (MAX_TO_KEEP 1), plus model_final; the lock released.
    assert sorted(f for f in os.listdir(run_copy) if f.endswith(".pth")) == [
        "model_0000003.pth",
        "model_final.pth",
    ]
    assert not (run_copy / LOCK_NAME).exists()


def test_eval_only_without_weights_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        _run(tmp_path / "eval", eval_only=True)
    assert "--eval-only needs weights" in str(e.value) and "MODEL.WEIGHTS" in str(e.value)
    assert not (tmp_path / "eval").exists()
