"""``NonFiniteLossGuard``: stop training at the first NaN/inf loss, naming the term and iteration.

detectron2's ``SimpleTrainer`` only notices a non-finite loss when it writes metrics (and, in
detectron2 main, only every ``gather_metric_period`` iterations), after ``backward``, on the main
process only, with a message that does not say which term went wrong. Other processes of a
distributed job then block in the next all-reduce until the timeout. The guard checks the loss
dict as the model returns it, before ``backward`` and before the optimizer step, on every
process, and all processes stop at the same iteration.
"""

import logging
from typing import Any, Dict, List

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

__all__ = ["NonFiniteLossGuard"]

logger = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class NonFiniteLossGuard(HookBase):
    """
    Raise ``FloatingPointError`` as soon as a loss term of the model is NaN or infinite, naming
    the term(s), their values, the iteration and the last checkpoint to resume from.

    The check runs in a forward hook of the model, i.e. before gradients are computed and the
    weights updated: the weights stay those of the previous iteration, the periodic checkpointer
    (an ``after_step`` hook) does not run for the failed iteration, and
    :class:`~panoptic_ext.apps.train.checkpoint.PanopticCheckpointer` never writes non-finite
    weights, so ``last_checkpoint`` keeps naming the last good checkpoint.
    """

    def __init__(self):
        self._handle = None
        self.failure: str = ""

    def before_train(self):
        self._handle = _unwrap(self.trainer.model).register_forward_hook(self._check)

    def after_train(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.failure:
            logger.error(self.failure)

    def _last_checkpoint(self) -> str:
        checkpointer = getattr(self.trainer, "checkpointer", None)
        if checkpointer is None or not checkpointer.has_checkpoint():
            return ""
        return checkpointer.get_checkpoint_file()

    def _check(self, module: torch.nn.Module, inputs: Any, outputs: Any) -> None:
        if not module.training or not isinstance(outputs, dict) or not outputs:
            return
        losses: Dict[str, torch.Tensor] = {
            k: v for k, v in outputs.items() if isinstance(v, torch.Tensor)
        }
        if not losses:
            return
        names = sorted(losses)
        bad_here = torch.stack([~torch.isfinite(losses[k].detach()).all() for k in names])
        bad_anywhere = bad_here.to(torch.float32)
        if comm.get_world_size() > 1:
            # Every process must stop at the same iteration, or the others would wait in the
            # gradient all-reduce until the timeout.
            dist.all_reduce(bad_anywhere)
        if not bool(bad_anywhere.any()):
            return
        self.failure = self._message(names, losses, bad_here, bad_anywhere)
        raise FloatingPointError(self.failure)

    def _message(
        self,
        names: List[str],
        losses: Dict[str, torch.Tensor],
        bad_here: torch.Tensor,
        bad_anywhere: torch.Tensor,
    ) -> str:
        def value(k: str) -> str:
            v = losses[k].detach()
            return f"{v.item():.4g}" if v.numel() == 1 else f"tensor of shape {tuple(v.shape)}"

        bad = [k for k, flag in zip(names, bad_anywhere.tolist()) if flag]
        where = ""
        if comm.get_world_size() > 1:
            where = f" (process {comm.get_rank()} of {comm.get_world_size()})"
        terms = ", ".join(
            f"{k} = {value(k)}" if flag else f"{k} (non-finite in another process)"
            for k, flag in zip(names, bad_here.tolist())
            if k in bad
        )
        good = ", ".join(f"{k} = {value(k)}" for k in names if k not in bad)
        last = self._last_checkpoint()
        resume = (
            f"The last good checkpoint is {last}: after fixing the cause, continue from it with "
            "--resume."
            if last
            else "No checkpoint was written yet."
        )
        return (
            f"Non-finite loss at iteration {self.trainer.iter}{where}: {terms}"
            + (f" (other terms: {good})" if good else "")
            + ". Training stopped before the weights were updated. "
            + resume
            + " Usual causes: a learning rate too high for the batch size (SOLVER.BASE_LR), "
            "no gradient clipping (SOLVER.CLIP_GRADIENTS), or bad annotations."
        )
