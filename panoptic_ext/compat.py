"""The one place that knows how detectron2 versions differ (v0.6 vs current main).

Code elsewhere asks these functions instead of checking versions itself.
"""

import functools
from collections.abc import Sequence

__all__ = [
    "detectron2_has_compiled_ops",
    "create_ddp_model",
    "enable_cpu_ddp",
    "fix_map_dataset_retry",
]

# Set on the stand-in ``detectron2/_C.py`` written by tools/install_detectron2.py.
_STANDIN_MARKER = "__panoptic_ext_standin__"


@functools.lru_cache(maxsize=None)
def detectron2_has_compiled_ops() -> bool:
    """True if detectron2's ``_C`` is a real compiled extension, not the installer's stand-in."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, _STANDIN_MARKER, False)


def create_ddp_model(model, **kwargs):
    """
    detectron2's ``create_ddp_model`` that also wraps a CPU model: detectron2 (v0.6 and main)
    passes ``device_ids=[local_rank]``, which ``DistributedDataParallel`` rejects for CPU modules.
    """
    from detectron2.engine import defaults

    original = getattr(defaults.create_ddp_model, "__wrapped_create_ddp_model__", None)
    original = original or defaults.create_ddp_model
    first = next(model.parameters(), None)
    if "device_ids" not in kwargs and first is not None and first.device.type == "cpu":
        kwargs["device_ids"] = None
    return original(model, **kwargs)


def enable_cpu_ddp() -> None:
    """
    Make ``DefaultTrainer`` (which calls ``detectron2.engine.defaults.create_ddp_model``) work with
    CPU models in this process. Called by panoptic_ext's CPU launcher in its worker processes only.
    """
    from detectron2.engine import defaults

    if getattr(defaults.create_ddp_model, "__wrapped_create_ddp_model__", None) is not None:
        return
    original = defaults.create_ddp_model

    def cpu_aware_create_ddp_model(model, **kwargs):
        return create_ddp_model(model, **kwargs)

    cpu_aware_create_ddp_model.__wrapped_create_ddp_model__ = original
    cpu_aware_create_ddp_model.__doc__ = create_ddp_model.__doc__
    defaults.create_ddp_model = cpu_aware_create_ddp_model


class _IndexPool(Sequence):
    """A set of ints that ``random.sample`` accepts (Python 3.11 refuses sets): O(1) add/discard."""

    def __init__(self, items):
        self._items = list(dict.fromkeys(items))
        self._pos = {x: i for i, x in enumerate(self._items)}

    def __len__(self):
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]

    def __contains__(self, x):
        return x in self._pos

    def add(self, x):
        if x not in self._pos:
            self._pos[x] = len(self._items)
            self._items.append(x)

    def discard(self, x):
        i = self._pos.pop(x, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):  # move the last item into the hole
            self._items[i] = last
            self._pos[last] = i
        if not self._items:  # MapDataset would call random.sample on an empty pool next
            raise RuntimeError(
                "every record of the training set was skipped as bad "
                "(MODEL.PANOPTIC_EXT.DATA.ON_BAD_RECORD skip): the warnings above name each file "
                "and its problem; fix the dataset (or its registration paths)"
            )


def fix_map_dataset_retry(dataset) -> bool:
    """
    detectron2's ``MapDataset`` (v0.6 and main) retries a record whose mapper returned None with
    ``random.sample(a_set, k=1)``, which raises TypeError on Python >= 3.11; so skipping a bad
    record crashes the loader. Replace the set by an equivalent sequence, in place.

    Returns:
        bool: whether ``dataset`` was such a ``MapDataset`` and is now fixed.
    """
    from detectron2.data.common import MapDataset

    pool = getattr(dataset, "_fallback_candidates", None)
    if not isinstance(dataset, MapDataset) or not isinstance(pool, (set, frozenset)):
        return False
    dataset._fallback_candidates = _IndexPool(sorted(pool))
    return True
