"""What both training entries (yacs ``Trainer``, Python-config ``LazyTrainer``) share: the run's
checkpointer, the safety hooks, and checkpoint state that ``--resume`` can trust."""

import weakref
from typing import Any, Dict, List

from detectron2.engine import HookBase
from detectron2.utils import comm

from panoptic_ext.apps.train.checkpoint import CheckpointError, PanopticCheckpointer
from panoptic_ext.apps.train.fault_hooks import NonFiniteLossGuard
from panoptic_ext.apps.train.resume import ResumeState
from panoptic_ext.apps.train.resume_config import apply_current_hyperparameters, check_optimizer_state, nothing_to_train

__all__ = ["ResumableTrainerMixin", "run_checkpointer", "safety_hooks"]


def run_checkpointer(
    trainer: Any,
    output_dir: str,
    *,
    allow_partial: bool,
    max_to_keep: int,
    download_timeout: float,
    config_text: str,
) -> PanopticCheckpointer:
    """The checkpointer of a training run: atomic saves of the model and ``trainer`` (optimizer,
    scheduler, hooks), the run's config in each checkpoint (what ``--resume`` compares with),
    strict loads, the newest ``max_to_keep`` periodic checkpoints kept."""
    return PanopticCheckpointer(
        trainer.model,
        output_dir,
        allow_partial=allow_partial,
        max_to_keep=max_to_keep,
        download_timeout=download_timeout,
        extra_state={"config": config_text},
        trainer=weakref.proxy(trainer),
    )


def safety_hooks(seed: int, images_per_batch: int, num_workers: int) -> List[HookBase]:
    """The hooks that go first: a stop at the first non-finite loss, and per-iteration seeds and
    data position that make a resumed run repeat an uninterrupted one.

    Args:
        seed (int): the run's seed (< 0: drawn once, kept in checkpoints).
        images_per_batch (int): images per iteration over all processes.
        num_workers (int): data loader workers (for a warning only).
    """
    resume_state = ResumeState(seed, images_per_batch // comm.get_world_size(), num_workers)
    return [NonFiniteLossGuard(), resume_state]


class ResumableTrainerMixin:
    """
    Checkpoint state and ``--resume`` for a trainer with ``checkpointer``, ``_trainer``
    (detectron2's ``SimpleTrainer``), ``optimizer``, ``scheduler``, ``start_iter`` and
    ``max_iter``: the optimizer's state is saved (detectron2 v0.6 leaves it out); on resume the
    current config's hyper-parameters apply, and a checkpoint whose model or optimizer does not
    fit, or that leaves no iteration, is refused. The ``*_key`` / ``*_format`` attributes name
    the config keys in messages; ``_load_weights(resume)`` is the base trainer's loading.
    """

    _output_dir_key = "OUTPUT_DIR"
    _max_iter_key = "SOLVER.MAX_ITER"
    _weights_format = "MODEL.WEIGHTS {}"
    _allow_partial_override = "RUN.ALLOW_PARTIAL_WEIGHTS True"

    def _load_weights(self, resume: bool) -> None:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        # detectron2 v0.6 leaves out the SimpleTrainer's state, i.e. the optimizer's, so
        # --resume would restart AdamW's moments / SGD's momentum (detectron2 main saves it).
        if "_trainer" not in ret:
            ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        saved_optimizer = state_dict.get("_trainer", {}).get("optimizer")
        if saved_optimizer is not None:
            problem = check_optimizer_state(saved_optimizer, self.optimizer)
            if problem:
                raise CheckpointError(
                    f"--resume cannot continue the run of {self.checkpointer.get_checkpoint_file()}"
                    f": {problem}. Resume with the run's config (saved in the checkpoint and in "
                    f"{self._output_dir_key}/config.yaml), or start a new run (another "
                    f"{self._output_dir_key}, no --resume) from its weights with "
                    f"{self._weights_format.format('<checkpoint>')}."
                )
        current = [
            {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
        ]
        super().load_state_dict(state_dict)  # detectron2 main also loads "_trainer": idempotent
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        # The checkpoint's learning rates, weight decay, ... would silently override the config's.
        apply_current_hyperparameters(self.optimizer, getattr(self, "scheduler", None), current)

    def resume_or_load(self, resume: bool = True) -> None:
        """
        detectron2's ``resume_or_load``; with ``resume`` and a checkpoint in the output
        directory, every weight must fit (partial loading applies to a new run's initial weights
        only) and an iteration must be left to train.

        Raises:
            CheckpointError: the checkpoint does not fit the current config.
            ResumeConfigError: max_iter leaves no iteration to train.
        """
        if not (resume and self.checkpointer.has_checkpoint()):
            return self._load_weights(resume)
        path = self.checkpointer.get_checkpoint_file()
        allow_partial, self.checkpointer.allow_partial = self.checkpointer.allow_partial, False
        try:
            self._load_weights(True)
        except CheckpointError as e:
            if "do not fit the model" not in str(e):
                raise
            raise CheckpointError(
                f"--resume cannot continue the run of {path} with the model of this config "
                "(other class counts or architecture). To train this model from that run's "
                f"weights, start a new run (another {self._output_dir_key}, no --resume) with "
                f"{self._weights_format.format(path)} {self._allow_partial_override}.\n{e}"
            ) from e
        finally:
            self.checkpointer.allow_partial = allow_partial
        if self.start_iter >= self.max_iter:
            raise nothing_to_train(
                path, self.start_iter, self.max_iter, self._max_iter_key, self._weights_format
            )
