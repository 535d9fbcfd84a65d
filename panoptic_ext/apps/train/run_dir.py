"""Preparing OUTPUT_DIR for a run, before anything is written there (logs, ``config.yaml``):

- :class:`OutputDirLock`: one run at a time (an OS file lock, released when its process ends,
  however it ends: a crashed run never blocks the next one);
- a training started without ``--resume`` in an OUTPUT_DIR that holds a previous run (its
  checkpoints, ``metrics.json``) refuses, moves that run aside or deletes it, as
  ``RUN.EXISTING_OUTPUT`` says ("refuse" by default: nothing is lost silently);
- ``--resume`` is checked against the run's saved config
  (:func:`~panoptic_ext.apps.train.resume_config.check_resume`).

Only the main process (rank 0) does this; an error there stops every process of the job.
"""

import fcntl
import glob
import logging
import os
import shutil
import socket
import sys
import time
from typing import List, Optional, Tuple, Union

from detectron2.config import CfgNode
from detectron2.utils import comm

from panoptic_ext.apps.train.checkpoint import read_last_checkpoint
from panoptic_ext.apps.train.resume_config import RunSettings, check_resume

__all__ = [
    "EXISTING_OUTPUT_CHOICES",
    "LOCK_NAME",
    "OutputDirBusyError",
    "OutputDirError",
    "OutputDirLock",
    "prepare_output_dir",
    "previous_run_files",
]

logger = logging.getLogger(__name__)

EXISTING_OUTPUT_CHOICES = ("refuse", "move", "overwrite")
LOCK_NAME = ".panoptic_ext_run.lock"
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


class OutputDirBusyError(OutputDirError):
    """Another running process holds the OUTPUT_DIR."""


class OutputDirLock:
    """
    An exclusive lock on a directory: ``flock`` on ``<directory>/.panoptic_ext_run.lock``, which
    the OS releases when the process ends. Two runs in one OUTPUT_DIR would mix their
    checkpoints, ``config.yaml``, ``metrics.json`` and evaluation results. The file names its
    holder, for the message of a refused run only.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> "OutputDirLock":
        """
        Raises:
            OutputDirBusyError: another process holds the lock (the message names it).
        """
        os.makedirs(self.directory, exist_ok=True)
        while self._file is None:
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "a process that is starting"
                f.close()
                raise OutputDirBusyError(
                    f"OUTPUT_DIR {self.directory} is in use by another run ({holder}). Two runs "
                    "in one OUTPUT_DIR would mix their checkpoints, config.yaml, metrics.json and "
                    "evaluation results. Wait for that run to end or stop it, or set another "
                    "OUTPUT_DIR."
                ) from None
            try:  # the holder before us deleted the file we locked: lock the new one
                same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                f.close()
                continue
            f.truncate(0)
            command = " ".join([os.path.basename(sys.executable)] + sys.argv)
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            f.write(
                f"process {os.getpid()} on {socket.gethostname()}, started {started}: {command}"
            )
            f.flush()
            self._file = f
        return self

    def release(self) -> None:
        """Delete the lock file and release the lock. Idempotent."""
        if self._file is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        self._file.close()
        self._file = None

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
    if "last_checkpoint" in names:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            parts.append(f"last_checkpoint -> {f.read().strip() or '(empty)'}")
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
    policy, key, out = run.existing_output, run.key("existing_output"), run.key("output_dir")
    what = _describe(output_dir, files)
    if policy == "move":
        target = _move_aside(output_dir)
        return [
            f"{out} {output_dir} held a previous run ({what}): moved it to {target} "
            f"({run.setting('existing_output', 'move')}; --resume continues a run instead)"
        ]
    if policy == "overwrite":
        _delete_run(output_dir)
        setting = run.setting("existing_output", "overwrite")
        return [f"{out} {output_dir} held a previous run ({what}): deleted it ({setting})"]
    if policy != "refuse":
        raise OutputDirError(f"{key} = {policy!r} is not one of {list(EXISTING_OUTPUT_CHOICES)}")
    raise OutputDirError(
        f"{out} {output_dir} holds a previous run ({what}); a new training would overwrite "
        f"it. To continue that run, add --resume. To start a new one, set another {out}, or "
        f"{run.setting('existing_output', 'move')} (the previous run goes to "
        f"{os.path.normpath(output_dir)}.previous-<date>-<time>) or overwrite (it is deleted)."
    )


def _prepare(run: RunSettings, resume: bool, eval_only: bool) -> Tuple[OutputDirLock, List[str]]:
    lock = OutputDirLock(run.output_dir).acquire()
    try:
        if eval_only:
            return lock, []
        if resume and read_last_checkpoint(run.output_dir) is not None:
            return lock, check_resume(run)
        return lock, _handle_previous_run(run)  # a new run (also --resume with no checkpoint)
    except BaseException:
        lock.release()
        raise


def prepare_output_dir(
    cfg: Union[CfgNode, RunSettings], *, resume: bool = False, eval_only: bool = False
) -> Tuple[Optional[OutputDirLock], List[str]]:
    """
    Lock the run's OUTPUT_DIR and make sure the run loses no earlier work (see the module
    docstring). Call it before anything writes to OUTPUT_DIR; release the lock at the end.

    Args:
        cfg (CfgNode or RunSettings): the run's config.
        resume (bool): ``--resume``.
        eval_only (bool): ``--eval-only`` (locks only).

    Returns:
        (OutputDirLock or None, list[str]): the lock held by the main process (None in other
        processes or without OUTPUT_DIR), and messages to log once logging is set up.

    Raises:
        OutputDirBusyError, OutputDirError, ResumeConfigError, CheckpointError: in every
            process of the job.
    """
    run = cfg if isinstance(cfg, RunSettings) else RunSettings.from_cfg(cfg)
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
