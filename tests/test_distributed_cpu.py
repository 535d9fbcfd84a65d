"""Training in 2 CPU processes (gloo), as ``train_net.py --num-gpus 2`` runs it without a GPU:
gradients are synchronized (after every step the weights are identical in both processes and
differ from the previous ones), and the main process's checkpoint resumes in a single process."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from panoptic_ext.apps.train import Trainer, get_panoptic_cfg, launch, main, parse_args
from panoptic_ext.data import ensure_synthetic_panoptic
from tests.reliability_common import register_tiny_synthetic, unregister

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_CONFIG = os.path.join(
    ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml"
)
PREFIX = "reliability_ddp"
MAX_ITER = 3


def _opts(output_dir, max_iter=MAX_ITER):
    return [
        "DATASETS.TRAIN",
        f"('{PREFIX}_train',)",
        "DATASETS.TEST",
        f"('{PREFIX}_val',)",
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.IMS_PER_BATCH",
        "2",  # one image per process
        "SOLVER.CHECKPOINT_PERIOD",
        "100",
        "TEST.EVAL_PERIOD",
        "0",
        "OUTPUT_DIR",
        str(output_dir),
    ]


def _digest(model: torch.nn.Module) -> str:
    """Hash of every trainable parameter's bytes (BN running statistics are per process)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _unwrapped(model):
    return getattr(model, "module", model)


class _SyncProbe(HookBase):
    """Gathers every process's parameter digest before training and after each step."""

    def __init__(self, output_file: str):
        self.output_file = output_file
        self.records = []

    def _gather(self, iteration):
        digests = comm.all_gather(_digest(_unwrapped(self.trainer.model)))
        self.records.append({"iter": iteration, "digests": digests})

    def before_train(self):
        self._gather(-1)

    def after_step(self):
        self._gather(self.trainer.iter)

    def after_train(self):
        if comm.is_main_process():
            with open(self.output_file, "w") as f:
                json.dump({"world_size": comm.get_world_size(), "records": self.records}, f)


def _job(data_root, argv, probe_file):
    """Runs in each spawned process: train_net's main, with the probe hook added."""
    register_tiny_synthetic(data_root, PREFIX, num_train=4, num_val=2)
    build_hooks = Trainer.build_hooks

    def build_hooks_with_probe(self):
        return build_hooks(self) + [_SyncProbe(probe_file)]

    Trainer.build_hooks = build_hooks_with_probe
    main(parse_args(argv))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("reliability_ddp_data"))
    names = register_tiny_synthetic(root, PREFIX, num_train=4, num_val=2)
    for name in names.values():
        DatasetCatalog.get(name)  # generate once, before the processes start
    yield root
    unregister(*names.values())


def test_two_cpu_processes_synchronize_and_checkpoint_resumes_in_one(data_root, tmp_path):
    output_dir = tmp_path / "ddp"
    probe_file = str(tmp_path / "probe.json")
    argv = ["--config-file", QUICK_CONFIG, "--num-gpus", "2", "--dist-url", "auto"]
    argv += _opts(output_dir)
    args = parse_args(argv)
    assert not torch.cuda.is_available()
    launch(_job, args.num_gpus, dist_url=args.dist_url, args=(data_root, argv, probe_file))

    with open(probe_file) as f:
        probe = json.load(f)
    assert probe["world_size"] == 2
    records = probe["records"]
    assert [r["iter"] for r in records] == [-1] + list(range(MAX_ITER))
    for r in records:  # identical weights in both processes, before training and after each step
        assert r["digests"][0] == r["digests"][1], f"weights differ after iteration {r['iter']}"
    steps = [r["digests"][0] for r in records]
    assert len(set(steps)) == len(steps), "a step left the weights unchanged"

    # The checkpoint of the main process resumes in a single process, with the final weights.
    assert (output_dir / "last_checkpoint").read_text() == "model_final.pth"
    cfg = get_panoptic_cfg(QUICK_CONFIG, _opts(output_dir, max_iter=MAX_ITER + 1))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == MAX_ITER
    assert _digest(_unwrapped(trainer.model)) == steps[-1]
    trainer.train()  # one more iteration, in one process
    assert trainer.iter == MAX_ITER + 1
    final = torch.load(output_dir / "model_final.pth", weights_only=True)
    assert final["iteration"] == MAX_ITER


@pytest.mark.slow
def test_train_net_command_line_num_gpus_2(tmp_path):
    """``python train_net.py --num-gpus 2`` itself, on the CPU, on the builtin synthetic dataset
    (its worker processes register only the builtin datasets)."""
    datasets = tmp_path / "datasets"
    ensure_synthetic_panoptic(str(datasets / "panoptic_synthetic"))  # once, before the workers
    output_dir = tmp_path / "cli"
    argv = ["--config-file", QUICK_CONFIG, "--num-gpus", "2", "--dist-url", "auto"]
    argv += _opts(output_dir)
    argv += ["DATASETS.TRAIN", "('panoptic_synthetic_train',)", "DATASETS.TEST", "()"]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py")] + argv,
        cwd=str(tmp_path),
        env=dict(os.environ, DETECTRON2_DATASETS=str(datasets)),
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert (output_dir / "last_checkpoint").read_text() == "model_final.pth"
    assert "Rank of current process: 0. World size: 2" in (output_dir / "log.txt").read_text()
