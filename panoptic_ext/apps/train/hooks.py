"""Training hooks: a progress line with an ETA."""

import datetime
import logging
import statistics
import time
from collections import deque
from typing import Optional

from detectron2.engine import HookBase

__all__ = ["ProgressHook"]

logger = logging.getLogger(__name__)


def _format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class ProgressHook(HookBase):
    """
    Log a progress line ``[#####-----] 120/400 (30%) 2.15 s/it, elapsed 0:04:18, ETA 0:10:02,
    total_loss 1.234`` every ``period`` seconds and after the last iteration.

    The speed is the median duration of the last ``window`` iterations (data loading and hooks
    included); the median keeps an occasional periodic evaluation, whose own progress
    detectron2's ``inference_on_dataset`` logs, from skewing it.
    """

    def __init__(self, period: float = 20.0, window: int = 20, bar_width: int = 20):
        """
        Args:
            period (float): seconds between two progress lines.
            window (int): number of iterations the speed is averaged over.
            bar_width (int): characters of the progress bar.
        """
        self._period = period
        self._bar_width = bar_width
        self._durations: deque = deque(maxlen=window)
        self._start: Optional[float] = None
        self._step_start = 0.0
        self._last_log = 0.0

    def before_train(self):
        self._start = self._last_log = time.perf_counter()

    def before_step(self):
        self._step_start = time.perf_counter()

    def after_step(self):
        now = time.perf_counter()
        self._durations.append(now - self._step_start)
        done = self.trainer.iter + 1
        last = done >= self.trainer.max_iter
        if now - self._last_log >= self._period or last:
            self._last_log = now
            logger.info(self.progress_line(done, now))

    @property
    def seconds_per_iter(self) -> float:
        """Median duration of the last ``window`` iterations (0 before the first one)."""
        return statistics.median(self._durations) if self._durations else 0.0

    def progress_line(self, done: int, now: float) -> str:
        """The progress line after ``done`` iterations, at time ``now`` (``perf_counter``)."""
        max_iter = self.trainer.max_iter
        seconds_per_iter = self.seconds_per_iter
        filled = int(self._bar_width * done / max(max_iter, 1))
        bar = "#" * filled + "-" * (self._bar_width - filled)
        line = (
            f"[{bar}] {done}/{max_iter} ({100.0 * done / max(max_iter, 1):.0f}%) "
            f"{seconds_per_iter:.2f} s/it, elapsed {_format_seconds(now - self._start)}, "
            f"ETA {_format_seconds(seconds_per_iter * (max_iter - done))}"
        )
        history = self.trainer.storage.histories().get("total_loss")
        if history is not None:
            line += f", total_loss {history.median(len(self._durations) or 1):.3f}"
        return line
