"""Resuming that repeats an uninterrupted run: per-iteration seeds and the data position.

A run resumed by detectron2's ``DefaultTrainer`` continues from the checkpoint's weights,
optimizer and LR schedule, but its random number generators restart from ``SEED`` and its
training sampler from the first image, so iterations after the resume differ from those of a run
that was never interrupted. Here:

- :class:`ResumeState` reseeds Python's, NumPy's and torch's generators before each iteration
  from ``(seed, iteration, rank)``: the randomness of iteration ``i`` (augmentations, proposal
  sampling) no longer depends on the history of the process. The seed is stored in the
  checkpoint, so even a run with ``SEED = -1`` resumes exactly (a ``SEED >= 0`` given on
  ``--resume`` is used as given);
- :func:`make_resumable` wraps the train loader's sampler so that :class:`ResumeState` can skip
  the indices that the finished iterations consumed.

With ``DATALOADER.NUM_WORKERS 0`` (loading in the main process) a resumed run then reproduces the
uninterrupted one exactly on the CPU. With workers, their generators and prefetching are outside
this control, and detectron2 v0.6 starts them before the checkpoint is read.
"""

import itertools
import logging
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from torch.utils.data import DataLoader, Sampler

from panoptic_ext.compat import fix_map_dataset_retry

__all__ = [
    "ResumableSampler",
    "ResumeState",
    "make_resumable",
    "find_resumable_sampler",
    "prepare_train_loader",
]

logger = logging.getLogger(__name__)


class ResumableSampler(Sampler):
    """A sampler that skips the first ``start`` indices of another (per-process) sampler."""

    def __init__(self, sampler: Sampler):
        """
        Args:
            sampler (Sampler): e.g. detectron2's ``TrainingSampler``; its stream of indices must be
                a function of its seed (as detectron2's training samplers are).
        """
        self.sampler = sampler
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(iter(self.sampler), self.start, None)


def _children(obj: Any):
    for attr in ("dataset", "sampler", "batch_sampler"):
        child = getattr(obj, attr, None)
        if child is not None:
            yield obj, attr, child


def _find(obj: Any, depth: int = 6):
    """(parent, attribute) of the first sampler below ``obj``'s dataset/sampler attributes."""
    if depth == 0:
        return None
    for parent, attr, child in _children(obj):
        if attr == "sampler" and isinstance(child, Sampler) and hasattr(parent, "dataset"):
            if type(parent).__name__ == "ToIterableDataset" or isinstance(child, ResumableSampler):
                return parent, attr
        found = _find(child, depth - 1)
        if found:
            return found
    return None


def make_resumable(data_loader: Any) -> Any:
    """
    Wrap the sampler inside a loader made by detectron2's ``build_detection_train_loader`` in a
    :class:`ResumableSampler` (in place) and return the loader.
    """
    found = _find(data_loader)
    if found is None:
        logger.warning("No sampler found in the train loader: resuming restarts its data order")
        return data_loader
    parent, attr = found
    sampler = getattr(parent, attr)
    if not isinstance(sampler, ResumableSampler):
        setattr(parent, attr, ResumableSampler(sampler))
    return data_loader


def prepare_train_loader(data_loader: Any) -> Any:
    """
    Make a loader built by detectron2's ``build_detection_train_loader`` resumable
    (:func:`make_resumable`) and able to skip records (a mapper returning None, as
    ``PanopticFPNDatasetMapper`` does with ``ON_BAD_RECORD "skip"``) on Python >= 3.11 with
    detectron2 v0.6 too, with a clear error when every record is bad
    (:func:`panoptic_ext.compat.fix_map_dataset_retry`). In place; returns the loader.
    """
    found = _find(data_loader)
    if found is not None:
        fix_map_dataset_retry(getattr(found[0], "dataset", None))
    _seed_loader_generators(data_loader)
    return make_resumable(data_loader)


def _seed_loader_generators(obj: Any, depth: int = 6) -> None:
    """
    A torch ``DataLoader`` draws its base seed from the global torch generator when its iterator
    starts, i.e. during the first iteration of a run (detectron2 starts the inner loader lazily):
    after a resume, that draw shifts the random numbers of the first resumed iteration. Draw it
    now, when the loader is built, into the loader's own generator.
    """
    if depth == 0:
        return
    if isinstance(obj, DataLoader) and obj.generator is None:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        obj.generator = torch.Generator().manual_seed(seed)
    for _, _, child in _children(obj):
        _seed_loader_generators(child, depth - 1)


def find_resumable_sampler(data_loader: Any) -> Optional[ResumableSampler]:
    """The :class:`ResumableSampler` that :func:`make_resumable` put into ``data_loader``."""
    found = _find(data_loader)
    if found is None:
        return None
    sampler = getattr(*found)
    return sampler if isinstance(sampler, ResumableSampler) else None


def iteration_seed(seed: int, iteration: int, rank: int) -> int:
    """A well-mixed 31-bit seed for one iteration of one process."""
    return int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0] >> 1)


class ResumeState(HookBase):
    """
    Reseed the random generators before every iteration from ``(seed, iteration, rank)`` and, on
    resume, skip the data that the finished iterations used (see the module docstring).
    """

    def __init__(self, seed: int, images_per_iteration: int, num_workers: int = 0):
        """
        Args:
            seed (int): base seed (``SEED``); a negative value draws one, shared by all processes.
            images_per_iteration (int): images one process loads per iteration
                (``SOLVER.IMS_PER_BATCH // world_size``).
            num_workers (int): ``DATALOADER.NUM_WORKERS``, for a warning only.
        """
        self.configured = seed >= 0  # a changed SEED applies on --resume; a drawn one is kept
        self.seed = int(seed) if seed >= 0 else int(comm.shared_random_seed())
        self.images_per_iteration = images_per_iteration
        self.num_workers = num_workers

    def before_train(self):
        start = self.trainer.start_iter
        sampler = find_resumable_sampler(self.trainer.data_loader)
        if sampler is not None:
            sampler.start = start * self.images_per_iteration
        if start > 0:
            logger.info(
                "Resuming at iteration %d: skipping the first %d images of the data order%s",
                start,
                start * self.images_per_iteration,
                "" if sampler is not None else " is not possible (no resumable sampler)",
            )
            if self.num_workers > 0:
                logger.warning(
                    "DATALOADER.NUM_WORKERS > 0: the data after resuming may differ from an "
                    "uninterrupted run's (set it to 0 for an exact repetition)"
                )

    def before_step(self):
        seed_all_rng(iteration_seed(self.seed, self.trainer.iter, comm.get_rank()))

    def state_dict(self) -> Dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not self.configured:
            self.seed = int(state_dict["seed"])
