"""Files of :class:`~panoptic_ext.apps.train.checkpoint.PanopticCheckpointer`: atomic writes with
clear errors, retention of periodic checkpoints, temporary files of interrupted saves, and a
timeout for downloads of ``MODEL.WEIGHTS``.

- :func:`atomic_torch_save` / :func:`atomic_write_text` write a hidden temporary file in the same
  directory, fsync it and rename it over the target: the target is the old file or the complete
  new one. torch reports a failed write (full disk) or a Ctrl-C inside ``torch.save`` as
  ``enforce fail at inline_container.cc``, with the real cause only in the exception's context:
  here it becomes :class:`CheckpointSaveError` ("No space left on device", naming the file) or a
  ``KeyboardInterrupt`` saying what was being written.
- :func:`prune_periodic_checkpoints` keeps the newest ``model_XXXXXXX.pth`` files.
- :func:`stale_temporary_files` finds the temporary files of saves whose process is gone.
- :func:`socket_timeout` bounds every blocking socket operation of a download (iopath downloads
  with ``urllib.request.urlretrieve``, which has no timeout of its own).
- :func:`read_last_checkpoint` reads the ``last_checkpoint`` tag, with a clear error if empty.
"""

import contextlib
import errno
import glob
import logging
import os
import re
import shutil
import socket
from typing import Any, Callable, Iterator, List, Optional

import torch

__all__ = [
    "CheckpointError",
    "CheckpointSaveError",
    "atomic_torch_save",
    "atomic_write_text",
    "periodic_checkpoints",
    "prune_periodic_checkpoints",
    "read_last_checkpoint",
    "socket_timeout",
    "stale_temporary_files",
]

logger = logging.getLogger(__name__)

# Temporary files of a save: hidden, and not ending in ".pth", so that neither
# ``last_checkpoint`` nor ``get_all_checkpoint_files`` can pick them.
_TMP_PATTERN = ".{name}.{pid}.tmp"
_TMP_RE = re.compile(r"^\..+\.(\d+)\.tmp$")
# Files written by detectron2's PeriodicCheckpointer ("model_final.pth" is not one of them).
_PERIODIC_RE = re.compile(r"^model_(\d{7})\.pth$")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is kept."""


def read_last_checkpoint(directory: str) -> Optional[str]:
    """
    The path of the checkpoint that ``directory/last_checkpoint`` names, or None if there is no
    such file.

    Raises:
        CheckpointError: the file is empty (it names no checkpoint to resume from).
    """
    tag = os.path.join(directory, "last_checkpoint")
    try:
        with open(tag) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    if not name:
        found = sorted(
            os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(directory), "*.pth"))
        )
        raise CheckpointError(
            f"{tag} is empty: it must name the checkpoint to resume from ("
            + (f"those here: {', '.join(found)}" if found else f"{directory} holds no .pth file")
            + "). Write that file name into it, or start a new run without --resume."
        )
    return os.path.join(directory, name)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. not permitted on this file system: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _root_cause(error: BaseException) -> BaseException:
    """The innermost KeyboardInterrupt or OSError in ``error``'s cause/context chain."""
    found, seen = error, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (KeyboardInterrupt, OSError)):
            found = error
        error = error.__cause__ or error.__context__
    return found


def _free_space(directory: str) -> str:
    try:
        return f"{shutil.disk_usage(directory).free / 2**20:.0f} MB free in {directory}"
    except OSError:
        return f"free space of {directory} unknown"


def _clear_error(error: BaseException, path: str) -> BaseException:
    cause = _root_cause(error)
    if isinstance(cause, KeyboardInterrupt):
        return KeyboardInterrupt(f"interrupted while writing {path}; it was not written")
    if isinstance(cause, OSError):
        reason = cause.strerror or str(cause)
        extra = f" ({_free_space(os.path.dirname(path))})" if cause.errno == errno.ENOSPC else ""
        return CheckpointSaveError(cause.errno, f"cannot write {path}: {reason}{extra}")
    return error


def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, _TMP_PATTERN.format(name=os.path.basename(path), pid=os.getpid()))
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        clear = _clear_error(e, path)
        if clear is e:
            raise
        raise clear from e
    _fsync_dir(directory)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``: ``path`` is then either the old file or the complete new one.

    Raises:
        CheckpointSaveError: the file could not be written (its message names the reason, e.g.
            "No space left on device", and the free space).
        KeyboardInterrupt: Ctrl-C during the write (``path`` unchanged).
    """
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str) -> None:
    """Write a small text file atomically (see :func:`atomic_torch_save`)."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def periodic_checkpoints(directory: str) -> List[str]:
    """The ``model_XXXXXXX.pth`` files of ``directory``, oldest iteration first."""
    found = []
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        m = _PERIODIC_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return [path for _, path in sorted(found)]


def prune_periodic_checkpoints(directory: str, max_to_keep: int, keep: str = "") -> List[str]:
    """
    Delete all but the newest ``max_to_keep`` periodic checkpoints of ``directory`` (never
    ``model_final.pth``, nor the file ``keep``). ``max_to_keep <= 0`` keeps all.

    Returns:
        list[str]: the deleted files.
    """
    if max_to_keep <= 0:
        return []
    old = periodic_checkpoints(directory)[:-max_to_keep]
    deleted = []
    for path in old:
        if keep and os.path.abspath(path) == os.path.abspath(keep):
            continue
        logger.info("Deleting %s (the newest %d periodic checkpoints are kept)", path, max_to_keep)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        deleted.append(path)
    return deleted


def stale_temporary_files(directory: str) -> List[str]:
    """Temporary files of saves in ``directory`` whose process is no longer running."""
    stale = []
    for path in glob.glob(os.path.join(glob.escape(directory), ".*.tmp")):
        m = _TMP_RE.match(os.path.basename(path))
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or not pid_alive(pid):
            stale.append(path)
        else:
            logger.warning("Keeping %s: process %d, which is writing it, is running", path, pid)
    return stale


@contextlib.contextmanager
def socket_timeout(seconds: Optional[float]) -> Iterator[None]:
    """Within the block, new sockets fail a blocking operation after ``seconds`` without progress
    (``socket.setdefaulttimeout``; process-wide, restored afterwards). None or <= 0: no change."""
    if not seconds or seconds <= 0:
        yield
        return
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
