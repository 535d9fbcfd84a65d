"""Preparing OUTPUT_DIR for a run, before anything is written there (``config.yaml``, logs):

- :class:`~panoptic_ext.apps.train.output_lock.OutputDirLock`: one run at a time;
- a training started without ``--resume`` in an OUTPUT_DIR that holds a previous run (its
  checkpoints, ``metrics.json``) refuses, moves that run aside or deletes it, as
  ``RUN.EXISTING_OUTPUT`` says ("refuse" by default: nothing is lost silently);
- ``--resume`` is checked against the run's saved config
  (:func:`~panoptic_ext.apps.train.resume_config.check_resume`).

Only the main process (rank 0) does this; an error there stops every process of the job.
"""

import glob
import logging
import os
import shutil
import time
from typing import List, Optional, Tuple, Union

from detectron2.config import CfgNode
from detectron2.utils import comm

from panoptic_ext.apps.train.output_lock import LOCK_NAME, OutputDirLock
from panoptic_ext.apps.train.resume_config import RunSettings, as_run_settings, check_resume

__all__ = [
    "EXISTING_OUTPUT_CHOICES",
    "OutputDirError",
    "previous_run_files",
    "prepare_output_dir",
]

logger = logging.getLogger(__name__)

EXISTING_OUTPUT_CHOICES = ("refuse", "move", "overwrite")

# Files that show that a run trained in a directory.
_RESULT_PATTERNS = (
    "last_checkpoint",
    "model_*.pth",
    "metrics.json",
    "events.out.tfevents.*",
    "final_metrics.json",
)
# What "overwrite" deletes: the results, and what a run derives from them (log.txt is appended
# to, config.yaml replaced).
_RUN_PATTERNS = _RESULT_PATTERNS + ("training_curves.png", "visualizations", "inference")


class OutputDirError(RuntimeError):
    """OUTPUT_DIR holds another run's results, or ``--resume`` cannot continue its run."""


def previous_run_files(output_dir: str) -> List[str]:
    """The files of ``output_dir`` that a training wrote (checkpoints, metrics), sorted."""
    found = set()
    for pattern in _RESULT_PATTERNS:
        found.update(glob.glob(os.path.join(glob.escape(output_dir), pattern)))
    return sorted(found)


def _describe(output_dir: str, files: List[str]) -> str:
    names = [os.path.basename(f) for f in files]
    checkpoints = [n for n in names if n.endswith(".pth")]
    parts = []
    last = os.path.join(output_dir, "last_checkpoint")
    if os.path.isfile(last):
        with open(last) as f:
            parts.append(f"last_checkpoint -> {f.read().strip()}")
    if checkpoints:
        parts.append(f"{len(checkpoints)} checkpoint(s): {', '.join(checkpoints[:4])}")
    parts.extend(n for n in names if n.endswith(".json"))
    return "; ".join(parts)


def _move_aside(output_dir: str) -> str:
    base = os.path.normpath(output_dir) + ".previous-" + time.strftime("%Y%m%d-%H%M%S")
    target, n = base, 1
    while os.path.exists(target):
        n += 1
        target = f"{base}-{n}"
    os.makedirs(target)
    for name in sorted(os.listdir(output_dir)):
        if name != LOCK_NAME:
            shutil.move(os.path.join(output_dir, name), os.path.join(target, name))
    return target


def _delete_run(output_dir: str) -> None:
    for pattern in _RUN_PATTERNS:
        for path in glob.glob(os.path.join(glob.escape(output_dir), pattern)):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def _handle_previous_run(run: RunSettings) -> List[str]:
    output_dir = run.output_dir
    files = previous_run_files(output_dir)
    if not files:
        return []
    policy, key = run.existing_output, run.existing_output_key
    what = _describe(output_dir, files)
    out = run.output_dir_key
    if policy == "move":
        target = _move_aside(output_dir)
        return [
            f"{out} {output_dir} held a previous run ({what}): moved it to {target} "
            f"({key} move; --resume continues a run instead)"
        ]
    if policy == "overwrite":
        _delete_run(output_dir)
        return [f"{out} {output_dir} held a previous run ({what}): deleted it ({key} overwrite)"]
    if policy != "refuse":
        raise OutputDirError(f"{key} = {policy!r} is not one of {list(EXISTING_OUTPUT_CHOICES)}")
    raise OutputDirError(
        f"{out} {output_dir} holds a previous run ({what}); a new training would overwrite "
        f"it. To continue that run, add --resume. To start a new one, set another {out}, or "
        f"{key} move (the previous run goes to "
        f"{os.path.normpath(output_dir)}.previous-<date>-<time>) or overwrite (it is deleted)."
    )


def _prepare(run: RunSettings, resume: bool, eval_only: bool) -> Tuple[OutputDirLock, List[str]]:
    lock = OutputDirLock(run.output_dir).acquire()
    try:
        if eval_only:
            return lock, []
        has_checkpoint = os.path.isfile(os.path.join(run.output_dir, "last_checkpoint"))
        if resume and has_checkpoint:
            return lock, check_resume(run)
        return lock, _handle_previous_run(run)  # a new run (also --resume with no checkpoint)
    except BaseException:
        lock.release()
        raise


def prepare_output_dir(
    cfg: Union[CfgNode, RunSettings], *, resume: bool = False, eval_only: bool = False
) -> Tuple[Optional[OutputDirLock], List[str]]:
    """
    Lock ``cfg.OUTPUT_DIR`` for this run and make sure the run loses no earlier work (see the
    module docstring). Call it before anything writes to OUTPUT_DIR; release the lock at the end.

    Args:
        cfg (CfgNode or RunSettings): the run's config.
        resume (bool): ``--resume``.
        eval_only (bool): ``--eval-only`` (locks only).

    Returns:
        (OutputDirLock or None, list[str]): the lock held by the main process (None in other
        processes or without OUTPUT_DIR), and messages to log once logging is set up.

    Raises:
        OutputDirBusyError, OutputDirError, ResumeConfigError: in every process of the job.
    """
    run = as_run_settings(cfg)
    lock, messages, error = None, [], None
    if run.output_dir and comm.is_main_process():
        try:
            lock, messages = _prepare(run, resume, eval_only)
        except Exception as e:  # re-raised below, after the other processes heard of it
            error = e
    if comm.get_world_size() > 1:
        main_error = comm.all_gather(str(error) if error is not None else None)[0]
        if error is None and main_error is not None:
            raise OutputDirError(f"the main process refused to start: {main_error}")
    if error is not None:
        raise error
    return lock, messages
