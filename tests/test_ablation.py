"""``tools/ablate.py`` (panoptic_ext.apps.ablation): specs checked before anything runs, a two-point
sweep that is interrupted and resumed without running its finished run again, the report, and
the fusion of two separate networks equal to the joint model's post-processing."""

import csv
import json
import os

import pytest
import torch
from detectron2.modeling import build_model

from panoptic_ext.apps.ablation import (
    DIVERGED_FILE,
    RESULT_FILE,
    SeparateNetworksPanoptic,
    SweepSpecError,
    load_sweeps,
    main,
    separate_network_configs,
    unique_runs,
)
from panoptic_ext.apps.train import Trainer, get_panoptic_cfg
from tests.common import random_image_batch
from tests.reliability_common import register_tiny_synthetic, tiny_cfg, unregister

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "ablation_tiny"
SEMANTIC = "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT"
SECOND = "SEM_SEG_HEAD.LOSS_WEIGHT=1.0"  # the run of the two-point sweeps' second point


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    """The tiny config (tests/reliability_common.py) as a YAML file, on a tiny synthetic split."""
    root = tmp_path_factory.mktemp("ablation")
    names = register_tiny_synthetic(str(root), PREFIX, num_train=4, num_val=2)
    cfg = tiny_cfg(train=[names["train"]], test=[names["val"]])
    cfg.TEST.EVAL_TASKS = ["panoptic_seg", "sem_seg", "instances"]
    path = root / "tiny.yaml"
    path.write_text(cfg.dump())
    yield str(path)
    unregister(*names.values())


def _spec(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        (f"sweep: ['{SEMANTIC}=0.5,1']\nsweeps: []\n", "unknown key 'sweeps'"),
        ("points: [{name: a, overides: []}]\n", "unknown key 'overides'"),
        ("sweep: ['MODEL.SEM_SEG_HEAD.LOSS_WEIGT=0.5,1']\n", "did you mean"),
        # a YAML flow list splits an unquoted entry at its commas
        (f"sweep: [{SEMANTIC}=0.5,1]\n", "quote entries"),
        (f"sweep: ['{SEMANTIC}=0.5,abc']\n", "has type str, but"),
        ("repeat: two\npoints: [{name: a}]\n", "repeat must be a int"),
        ("points: []\n", "the sweep is empty"),
        ("name: x\n", "the sweep is empty"),
        (f"overrides: ['{SEMANTIC}=0.5,1']\npoints: [{{name: a}}]\n", "put it under `sweep`"),
        ("points: [{name: a, networks: three}]\n", "networks must be one of"),
        ("- a\n- b\n", "must hold a mapping"),
    ],
)
def test_malformed_spec_fails_before_any_run(config_file, tmp_path, text, message):
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "--config-file",
                config_file,
                "--sweep",
                _spec(tmp_path, text),
                "--output",
                str(output),
            ]
        )
    assert message in str(e.value)
    assert str(tmp_path / "spec.yaml") in str(e.value)  # names the spec
    assert not output.exists()  # nothing started


def test_unknown_builtin_and_inline_errors(config_file, tmp_path):
    with pytest.raises(SweepSpecError, match="neither a built-in sweep"):
        load_sweeps(["lambda_x"], config_file)
    with pytest.raises(SweepSpecError, match="cannot parse"):
        load_sweeps([f"{SEMANTIC}==1"], config_file)
    with pytest.raises(SweepSpecError, match="several sweeps are named"):
        load_sweeps(["seeds", "seeds"], config_file)
    with pytest.raises(SweepSpecError, match="no sweep given"):
        load_sweeps([], config_file)


def test_paper_sweeps_share_runs(config_file):
    sweeps = load_sweeps(["paper"], config_file)
    assert [s.name for s in sweeps] == [
        "lambda_s", "lambda_i", "sem_seg_things", "losses", "networks", "seeds"
    ]  # fmt: skip
    runs = {r.name: r for r in unique_runs(sweeps)}
    # 4 lambda_s + 3 new lambda_i (1, 1 is shared) + all things + alternating + separate + 2 seeds
    assert len(runs) == 12
    by_sweep = {s.name: s for s in sweeps}
    lambda_s = {p.value: p.runs[0].name for p in by_sweep["lambda_s"].points}
    assert lambda_s[0.5] == "baseline"  # the config's own weights
    assert lambda_s[1.0] == by_sweep["lambda_i"].points[-1].runs[0].name
    zero = dict(by_sweep["lambda_i"].points[0].runs[0].overrides)
    assert zero["MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT"] == 0.0
    assert zero["MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.SCALE_RPN"] is True
    all_things = dict(by_sweep["sem_seg_things"].points[1].runs[0].overrides)
    assert all_things["MODEL.SEM_SEG_HEAD.NUM_CLASSES"] == 6  # 3 thing + 3 stuff, from the data
    assert by_sweep["networks"].points[1].runs[0].networks == "separate"
    seeds = [dict(r.overrides).get("SEED") for r in by_sweep["seeds"].points[0].runs]
    assert seeds == [None, 8, 9]  # the tiny config's SEED 7, then 8 and 9


def _interrupt_at(monkeypatch, run_name, iteration):
    """Ctrl-C in training step ``iteration`` of the run ``run_name``."""
    original = Trainer.run_step

    def run_step(self):
        if self.iter == iteration and os.path.basename(self.cfg.OUTPUT_DIR) == run_name:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "run_step", run_step)


def _two_point_argv(config_file, output):
    return ["--config-file", config_file, "--sweep", f"{SEMANTIC}=0.5,1.0", "--output",
            str(output), "--quick",
            # an untrained detector: keep its low-scoring detections so that AP is computed
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # fmt: skip


def test_two_point_sweep_resumes_after_interruption(config_file, tmp_path, monkeypatch):
    output = tmp_path / "sweep"
    argv = _two_point_argv(config_file, output)
    _interrupt_at(monkeypatch, SECOND, iteration=3)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    first, second = output / "baseline", output / SECOND
    assert (first / RESULT_FILE).is_file()
    assert not (second / RESULT_FILE).exists()
    assert (second / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    finished = {p: os.stat(first / p).st_mtime_ns for p in (RESULT_FILE, "model_final.pth")}
    monkeypatch.undo()

    # the base overrides changed: the interrupted run would train its rest with another learning
    # rate, and the finished one's row would show a config it did not train with
    checkpoint = os.stat(second / "model_0000001.pth").st_mtime_ns
    with pytest.raises(SystemExit) as e:
        main(argv + ["SOLVER.BASE_LR", "0.002"])
    msg = str(e.value)
    assert f"{second} holds a run (interrupted at model_0000001.pth) of another config" in msg
    assert f"{first} holds a run (finished) of another config" in msg
    assert msg.count("SOLVER.BASE_LR: 0.001 -> 0.002") == 2
    assert (second / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert os.stat(second / "model_0000001.pth").st_mtime_ns == checkpoint  # nothing trained

    result = main(argv)
    # the finished run was not run again; the interrupted one continued from its checkpoint
    assert {p: os.stat(first / p).st_mtime_ns for p in finished} == finished
    assert "Resuming at iteration 2" in (second / "log.txt").read_text()  # after model_0000001
    assert result["missing"] == [] and result["diverged"] == [] and result["failed"] == {}
    with open(output / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["value"] for r in rows] == ["0.5", "1.0"]
    for row in rows:
        for key in ("PQ", "PQ_th", "PQ_st", "mIoU", "box_AP", "mask_AP", "gflops", "params_m"):
            assert row[key] not in ("", "nan"), (key, row)
        assert float(row["train_seconds"]) > 0 and row["status"] == "finished"
    table = (output / "results.md").read_text()
    assert "| LOSS_WEIGHT | PQ | PQ_th | PQ_st | mIoU | box AP | mask AP |" in table
    assert os.path.getsize(output / "plots" / "LOSS_WEIGHT.png") > 1000


def test_diverging_point_does_not_stop_the_sweep(config_file, tmp_path, monkeypatch):
    output = tmp_path / "sweep"
    argv = _two_point_argv(config_file, output)
    original = Trainer.run_step

    def run_step(self):  # the baseline's semantic head becomes NaN at iteration 2
        if self.iter == 2 and os.path.basename(self.cfg.OUTPUT_DIR) == "baseline":
            with torch.no_grad():
                self.model.sem_seg_head.predictor.weight.fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(Trainer, "run_step", run_step)
    result = main(argv)  # no exception: the second point ran, the report was written
    assert result["diverged"] == ["baseline"] and result["failed"] == {}
    assert [r["run"] for r in result["rows"]] == [SECOND]
    record = json.loads((output / "baseline" / DIVERGED_FILE).read_text())
    assert "Non-finite loss at iteration 2: loss_sem_seg = nan" in record["message"]
    table = (output / "results.md").read_text()
    assert "| 0.5 | diverged | diverged |" in table and "not run" not in table
    with open(output / "results.csv") as f:
        status = {r["run"]: r["status"] for r in csv.DictReader(f)}
    assert status == {"baseline": "diverged", SECOND: "finished"}

    # run again: the diverged run is not trained again (it would diverge again), and it is told
    # apart from a run not run yet by its record
    monkeypatch.undo()
    before = sorted(os.listdir(output / "baseline"))
    result = main(argv)
    assert result["diverged"] == ["baseline"]
    assert sorted(os.listdir(output / "baseline")) == before
    assert "| 0.5 | diverged |" in (output / "results.md").read_text()


def test_bad_tool_arguments_fail_before_any_run(config_file, tmp_path, capsys):
    output = tmp_path / "out"
    base = ["--sweep", "seeds", "--output", str(output)]
    with pytest.raises(SystemExit):
        main(["--config-file", config_file, "--jobs", "0"] + base)
    assert "argument --jobs: must be >= 1, got 0" in capsys.readouterr().err
    python_config = os.path.join(
        ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.py"
    )
    with pytest.raises(SystemExit) as e:
        main(["--config-file", python_config] + base)
    assert f"config file {python_config} is a Python config (LazyConfig)" in str(e.value)
    assert not output.exists()


@pytest.mark.slow
def test_separate_networks_sweep(config_file, tmp_path):
    result = main(["--config-file", config_file, "--sweep", "networks", "--output",
                   str(tmp_path), "--quick"])  # fmt: skip
    rows = {r["point"]: r for r in result["rows"]}
    assert set(rows) == {"joint", "separate"}
    assert (tmp_path / "separate" / "instance" / "model_final.pth").is_file()
    assert (tmp_path / "separate" / "semantic" / "model_final.pth").is_file()
    # two backbones: more compute and parameters than the joint network
    assert rows["separate"]["gflops"] > rows["joint"]["gflops"]
    assert rows["separate"]["params_m"] > rows["joint"]["params_m"]
    assert rows["separate"]["PQ"] == rows["separate"]["PQ"]  # evaluated (not NaN)


def test_separate_fusion_equals_joint_postprocessing(config_file):
    cfg = get_panoptic_cfg(config_file)
    # random weights: let low-scoring detections through so that the fusion places things
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.0
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 1
    torch.manual_seed(0)
    joint = build_model(cfg).eval()
    weights = joint.state_dict()
    nets = {}
    for kind, sub in separate_network_configs(cfg).items():
        nets[kind] = build_model(sub).eval()
        own = {k: v for k, v in weights.items() if k in nets[kind].state_dict()}
        missing = nets[kind].load_state_dict(own, strict=False).missing_keys
        assert missing == [], missing
    fused = SeparateNetworksPanoptic(nets["instance"], nets["semantic"], joint.postprocessor)
    inputs = random_image_batch([(64, 64), (60, 52)])
    with torch.no_grad():
        expected, got = joint(inputs), fused(inputs)
    things = 0
    for e, g in zip(expected, got):
        assert torch.equal(e["panoptic_seg"][0], g["panoptic_seg"][0])
        assert e["panoptic_seg"][1] == g["panoptic_seg"][1]
        assert torch.equal(e["sem_seg"], g["sem_seg"])
        things += sum(s["isthing"] for s in e["panoptic_seg"][1])
    assert things > 0  # the fusion placed instances, not only stuff


@pytest.mark.slow
def test_parallel_jobs(config_file, tmp_path):
    """--jobs 2: runs in forked workers, which see the datasets registered here."""
    result = main(["--config-file", config_file, "--sweep", f"{SEMANTIC}=0.5,1.0", "--output",
                   str(tmp_path), "--quick", "--jobs", "2"])  # fmt: skip
    assert result["missing"] == [] and len(result["rows"]) == 2
