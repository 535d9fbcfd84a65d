"""
ROIAlign over chunks of the ROIs in parallel threads, for CPU inference (applied by
:func:`~panoptic_ext.modeling.optimize_for_cpu_inference` only; never while tracing, whose
recorder does not see other threads).

torchvision's CPU ``roi_align`` loops over the ROIs on one thread, so while the ROI heads pool
their 1000 proposals the other cores idle. Each ROI's output depends only on that ROI, so
splitting the ROIs into contiguous chunks pooled in threads (torch releases the GIL in its
operators) and concatenating the results gives the same tensor, bit for bit.
:func:`parallelize_roi_poolers` wraps the level poolers of a model's ROI poolers in place.
"""

import atexit
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch
from detectron2.modeling.poolers import ROIPooler
from torch import nn

from .cpu_inference import cpu_fast_path_applies

__all__ = ["ChunkedROIAlign", "parallelize_roi_poolers"]

logger = logging.getLogger(__name__)

# Fewer ROIs per chunk are not worth a thread hand-off.
_MIN_ROIS_PER_CHUNK = 16

_POOL: Optional[ThreadPoolExecutor] = None
_POOL_WORKERS = 0
_POOL_PID: Optional[int] = None
_POOL_LOCK = threading.Lock()


def _shutdown_pool() -> None:
    if _POOL is not None and _POOL_PID == os.getpid():
        _POOL.shutdown(wait=False)


atexit.register(_shutdown_pool)


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide thread pool with at least ``workers`` threads (shut down at exit)."""
    global _POOL, _POOL_WORKERS, _POOL_PID
    with _POOL_LOCK:
        # A forked child inherits the pool object but not its threads: work submitted to it
        # would never run, so each process makes its own.
        if _POOL is None or _POOL_WORKERS < workers or _POOL_PID != os.getpid():
            if _POOL is not None and _POOL_PID == os.getpid():
                _POOL.shutdown(wait=False)  # its queued work still runs
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="roi_align")
            _POOL_WORKERS, _POOL_PID = workers, os.getpid()
        return _POOL


class ChunkedROIAlign(nn.Module):
    """
    Wraps one ROIAlign module (``forward(input, rois)``, rows of ``rois`` independent): without
    autograd, the ROIs are split into up to ``num_threads`` contiguous chunks pooled in
    parallel; with autograd, the wrapped module runs as is.
    """

    def __init__(self, pooler: nn.Module, num_threads: Optional[int] = None):
        """
        Args:
            pooler (nn.Module): e.g. detectron2's ``ROIAlign``.
            num_threads (int): chunks at most; default ``torch.get_num_threads()`` at each call.
        """
        super().__init__()
        self.pooler = pooler
        self.num_threads = num_threads

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if not cpu_fast_path_applies(input):
            return self.pooler(input, rois)
        threads = self.num_threads or torch.get_num_threads()
        chunks = min(threads, rois.shape[0] // _MIN_ROIS_PER_CHUNK)
        if chunks < 2:
            return self.pooler(input, rois)
        parts = torch.tensor_split(rois, chunks)
        inference = torch.is_inference_mode_enabled()

        def run(part):
            # grad mode and inference mode are thread-local: use the caller's
            with torch.inference_mode(inference), torch.no_grad():
                return self.pooler(input, part)

        futures = [_pool(chunks - 1).submit(run, part) for part in parts[1:]]
        outputs = [run(parts[0])] + [f.result() for f in futures]
        return torch.cat(outputs)

    def extra_repr(self) -> str:
        return f"num_threads={self.num_threads or 'torch.get_num_threads()'}"


def parallelize_roi_poolers(model: nn.Module, num_threads: Optional[int] = None) -> int:
    """
    Wrap, in place, the level poolers of every detectron2 ``ROIPooler`` in ``model`` with
    :class:`ChunkedROIAlign` (parameter-free: the state dict is unchanged). Returns how many
    were wrapped.
    """
    count = 0
    for module in model.modules():
        if not isinstance(module, ROIPooler):
            continue
        for i, level in enumerate(module.level_poolers):
            if not isinstance(level, ChunkedROIAlign):
                module.level_poolers[i] = ChunkedROIAlign(level, num_threads)
                count += 1
    return count
