"""``OutputDirLock``: one run at a time in an OUTPUT_DIR.

Two trainings (or a training and an ``--eval-only`` run) writing one OUTPUT_DIR mix their
checkpoints, ``config.yaml``, ``metrics.json`` and evaluation results, and a ``--resume`` deletes
the other run's checkpoint being written. The lock is a file in OUTPUT_DIR naming its holder
(process id, host, start time, command). A lock whose process is gone (killed, crashed) is taken
over with a warning; so is one whose process id was reused by another process (Linux: the
process start time is checked too).
"""

import atexit
import json
import logging
import os
import socket
import sys
import time
from typing import Any, Dict, Optional

__all__ = ["LOCK_NAME", "OutputDirBusyError", "OutputDirLock", "pid_alive"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".panoptic_ext_run.lock"
# A lock file that cannot be parsed is taken to be being written for this long.
_UNREADABLE_GRACE_S = 30.0


class OutputDirBusyError(RuntimeError):
    """Another running process holds the OUTPUT_DIR."""


def _process_start_ticks(pid: int) -> Optional[int]:
    """Start time of a process in clock ticks since boot (Linux), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputDirLock:
    """An exclusive lock on a directory for this process (see the module docstring)."""

    def __init__(self, directory: str):
        """
        Args:
            directory (str): the OUTPUT_DIR (created if missing).
        """
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.held = False

    def _info(self) -> Dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start_ticks": _process_start_ticks(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        }

    def read_holder(self) -> Optional[Dict[str, Any]]:
        """The holder's record, or None if the lock file is missing or unreadable."""
        try:
            with open(self.path) as f:
                holder = json.load(f)
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) and "pid" in holder else None

    def _holder_running(self, holder: Optional[Dict[str, Any]]) -> bool:
        if holder is None:  # being written right now, or garbage left by a crash
            try:
                age = time.time() - os.path.getmtime(self.path)
            except OSError:
                return False
            return age < _UNREADABLE_GRACE_S
        if holder.get("host") != socket.gethostname():
            return True  # cannot be checked from here
        pid = int(holder["pid"])
        if not pid_alive(pid):
            return False
        ticks = holder.get("start_ticks")
        return ticks is None or _process_start_ticks(pid) in (None, ticks)

    def _busy_message(self, holder: Optional[Dict[str, Any]]) -> str:
        if holder is None:
            who = "a process that is creating the lock right now"
        else:
            who = (
                f"process {holder.get('pid')} on {holder.get('host')}, started "
                f"{holder.get('started')}: {holder.get('command')}"
            )
        return (
            f"OUTPUT_DIR {self.directory} is in use by another run ({who}). Two runs in one "
            "OUTPUT_DIR would mix their checkpoints, config.yaml, metrics.json and evaluation "
            "results. Wait for that run to end or stop it, or set another OUTPUT_DIR. If that "
            f"run is gone (e.g. on another host), delete {self.path}."
        )

    def acquire(self) -> "OutputDirLock":
        """
        Take the lock, taking over a stale one.

        Raises:
            OutputDirBusyError: naming the running holder.
        """
        os.makedirs(self.directory, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.read_holder()
                if self._holder_running(holder):
                    raise OutputDirBusyError(self._busy_message(holder)) from None
                logger.warning(
                    "Taking over the lock of %s from process %s (started %s), which is no "
                    "longer running",
                    self.directory,
                    holder.get("pid") if holder else "unknown",
                    holder.get("started") if holder else "unknown",
                )
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._info(), f)
            self.held = True
            atexit.register(self.release)
            return self
        raise OutputDirBusyError(self._busy_message(self.read_holder()))

    def release(self) -> None:
        """Remove the lock file if this process holds it. Idempotent."""
        if not self.held:
            return
        self.held = False
        holder = self.read_holder()
        if holder is not None and holder.get("pid") == os.getpid():
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
