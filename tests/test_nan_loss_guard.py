"""A non-finite loss stops training with a message naming the term and the iteration, in one or
several processes, and the last good checkpoint stays the one to resume from."""

import itertools
import os
from datetime import timedelta

import pytest
import torch
from detectron2.engine import HookBase, SimpleTrainer, hooks
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch.multiprocessing import ProcessRaisedException

from panoptic_ext.apps.train import Trainer, get_panoptic_cfg
from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer
from panoptic_ext.apps.train.distributed import launch_cpu
from panoptic_ext.apps.train.fault_hooks import NonFiniteLossGuard
from panoptic_ext.compat import create_ddp_model
from tests.reliability_common import register_tiny_synthetic, unregister

QUICK_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml",
)


class _ToyModel(torch.nn.Module):
    """Returns two loss terms; ``loss_b`` is NaN at iteration ``nan_at`` (on ``nan_rank``), or
    has NaN gradients but a finite value at iteration ``nan_grad_at``."""

    def __init__(self, nan_at=None, nan_grad_at=None, nan_rank=None):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 4)
        self.nan_at, self.nan_grad_at, self.nan_rank = nan_at, nan_grad_at, nan_rank

    def forward(self, batch):
        it = get_event_storage().iter
        loss_a = (self.linear(batch) ** 2).mean()
        loss_b = self.linear.weight.abs().mean()
        here = self.nan_rank is None or self.nan_rank == comm.get_rank()
        if it == self.nan_at and here:
            loss_b = loss_b * float("nan")
        if it == self.nan_grad_at:
            # value 0, gradient 0 * inf = NaN: the step writes NaN weights
            loss_b = loss_b + torch.sqrt(self.linear.weight[0, 0] * 0.0)
        return {"loss_a": loss_a, "loss_b": loss_b}


def _toy_trainer(model, output_dir, period=2, max_iter=10):
    data = itertools.repeat(torch.ones(2, 4))
    trainer = SimpleTrainer(model, data, torch.optim.SGD(model.parameters(), lr=0.01))
    trainer.checkpointer = PanopticCheckpointer(model, output_dir)
    trainer.register_hooks(
        [NonFiniteLossGuard(), hooks.PeriodicCheckpointer(trainer.checkpointer, period, max_iter)]
    )
    return trainer


def _finite_checkpoint(path):
    weights = torch.load(path, weights_only=True)["model"]
    return all(torch.isfinite(v).all() for v in weights.values())


def test_nan_loss_names_term_and_iteration_and_keeps_last_checkpoint(tmp_path):
    trainer = _toy_trainer(_ToyModel(nan_at=5), str(tmp_path))
    with pytest.raises(FloatingPointError) as e:
        trainer.train(0, 10)
    msg = str(e.value)
    assert "Non-finite loss at iteration 5: loss_b = nan" in msg
    assert "(other terms: loss_a = " in msg
    last = os.path.join(str(tmp_path), "model_0000003.pth")
    assert f"The last good checkpoint is {last}" in msg and "--resume" in msg
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
        "model_0000003.pth",
    ]  # no model_final.pth, nothing after the failure
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert _finite_checkpoint(last)
    # The failed iteration did not update the weights.
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nan_loss_before_first_checkpoint(tmp_path):
    trainer = _toy_trainer(_ToyModel(nan_at=0), str(tmp_path))
    with pytest.raises(FloatingPointError, match="iteration 0.*No checkpoint was written yet"):
        trainer.train(0, 10)
    assert os.listdir(tmp_path) == []


def test_nan_weights_from_finite_loss_are_never_checkpointed(tmp_path):
    # Iteration 3 has a finite loss but NaN gradients: the step writes NaN weights, then the
    # checkpoint of iteration 3 is refused and training stops.
    trainer = _toy_trainer(_ToyModel(nan_grad_at=3), str(tmp_path))
    with pytest.raises(FloatingPointError) as e:
        trainer.train(0, 10)
    assert "not saving checkpoint 'model_0000003'" in str(e.value)
    assert "linear.weight" in str(e.value)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert _finite_checkpoint(tmp_path / "model_0000001.pth")


def _toy_distributed_job(output_dir):
    model = create_ddp_model(_ToyModel(nan_at=3, nan_rank=1), broadcast_buffers=False)
    trainer = _toy_trainer(model, output_dir)
    try:
        trainer.train(0, 10)
    except FloatingPointError as e:
        with open(os.path.join(output_dir, f"rank{comm.get_rank()}.err"), "w") as f:
            f.write(str(e))


def test_nan_loss_in_one_process_stops_all_processes(tmp_path):
    # Process 1 alone sees the NaN. Both processes must stop at iteration 3 with the guard's
    # error: without agreement process 0 would go on into the gradient all-reduce and wait there
    # (until the 60 s timeout here) or fail with a communication error.
    launch_cpu(_toy_distributed_job, 2, args=(str(tmp_path),), timeout=timedelta(seconds=60))
    for rank in (0, 1):
        msg = (tmp_path / f"rank{rank}.err").read_text()
        assert f"Non-finite loss at iteration 3 (process {rank} of 2)" in msg
    assert "loss_b = nan" in (tmp_path / "rank1.err").read_text()
    assert "loss_b (non-finite in another process)" in (tmp_path / "rank0.err").read_text()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert _finite_checkpoint(tmp_path / "model_0000001.pth")


def _toy_distributed_job_uncaught(output_dir):
    model = create_ddp_model(_ToyModel(nan_at=3, nan_rank=1), broadcast_buffers=False)
    _toy_trainer(model, output_dir).train(0, 10)


def test_nan_loss_error_of_the_workers_reaches_the_launching_process(tmp_path):
    # What a user of train_net.py --num-gpus 2 sees: the guard's message (from whichever process
    # is reported first), never a signal of the process-group teardown.
    with pytest.raises(ProcessRaisedException) as e:
        launch_cpu(
            _toy_distributed_job_uncaught, 2, args=(str(tmp_path),), timeout=timedelta(seconds=60)
        )
    assert "FloatingPointError: Non-finite loss at iteration 3 (process " in str(e.value)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


class _DivergeAt(HookBase):
    """Makes the semantic head's weights NaN before iteration ``at``: only loss_sem_seg breaks."""

    def __init__(self, at):
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            with torch.no_grad():
                self.trainer.model.sem_seg_head.predictor.weight.fill_(float("nan"))


def test_trainer_stops_at_first_nan_loss_and_resumes_from_last_good_checkpoint(tmp_path):
    root = str(tmp_path / "data")
    names = register_tiny_synthetic(root, "reliability_faults", num_train=4, num_val=1)
    try:
        opts = [
            "DATASETS.TRAIN", f"('{names['train']}',)", "DATASETS.TEST", "()",
            "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2",
            "MODEL.BACKBONE.FREEZE_AT", "5", "OUTPUT_DIR", str(tmp_path / "out"),
        ]  # fmt: skip
        trainer = Trainer(get_panoptic_cfg(QUICK_CONFIG, opts))
        trainer.register_hooks([_DivergeAt(2)])
        trainer.resume_or_load(resume=False)
        with pytest.raises(FloatingPointError) as e:
            trainer.train()
        msg = str(e.value)
        assert (
            "Non-finite loss at iteration 2: loss_sem_seg = nan (other terms: loss_box_reg" in msg
        )
        last = os.path.join(str(tmp_path / "out"), "model_0000001.pth")
        assert f"The last good checkpoint is {last}" in msg
        out = tmp_path / "out"
        assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
        assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == ["model_0000001.pth"]
        assert _finite_checkpoint(last)

        resumed = Trainer(get_panoptic_cfg(QUICK_CONFIG, opts[:-2] + ["OUTPUT_DIR", str(out)]))
        resumed.resume_or_load(resume=True)
        assert resumed.start_iter == 2
        assert all(torch.isfinite(p).all() for p in resumed.model.parameters())
    finally:
        unregister(*names.values())
