"""The one place that knows how detectron2 (v0.6 vs current main) and torch versions differ.

Code elsewhere asks these functions instead of checking versions itself.
"""

import functools
import os
from collections.abc import Sequence
from typing import Optional

__all__ = [
    "autocast_enabled",
    "import_detectron2_export",
    "pad_to_backbone",
    "detectron2_has_compiled_ops",
    "detectron2_sgd_foreach",
    "model_zoo_config_file",
    "create_ddp_model",
    "enable_cpu_ddp",
    "map_dataset_can_skip",
    "fix_map_dataset_retry",
    "simple_trainer_of",
    "default_trainer_results",
    "create_local_process_group",
    "forget_local_process_group",
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


def autocast_enabled(device_type: str = "cpu") -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` ("cpu" or "cuda"), in every torch the
    project supports (``torch.is_autocast_enabled(device_type)`` is torch >= 2.4's form)."""
    import torch

    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # older torch: no argument, one function per device
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


def pad_to_backbone(tensors, backbone, pad_value: float = 0.0):
    """
    ``ImageList.from_tensors`` padded as ``GeneralizedRCNN.preprocess_image`` pads the images:
    to ``backbone.size_divisibility`` and, on detectron2 main, its ``padding_constraints``
    (e.g. FPN's ``square_pad``); v0.6 has neither ``padding_constraints`` nor that argument.
    """
    from detectron2.structures import ImageList

    constraints = getattr(backbone, "padding_constraints", None)
    if constraints is None:
        return ImageList.from_tensors(tensors, backbone.size_divisibility, pad_value)
    return ImageList.from_tensors(
        tensors, backbone.size_divisibility, pad_value, padding_constraints=constraints
    )


def import_detectron2_export(submodule: str):
    """
    ``detectron2.export.<submodule>`` (e.g. "flatten" for ``TracingAdapter``). detectron2 v0.6's
    ``detectron2/export/__init__.py`` imports its Caffe2 exporter, which needs ``caffe2``, gone
    from torch 2; its other submodules do not. There the package is registered without running
    its ``__init__`` (its submodules still import normally), and ``detectron2.export``'s Caffe2
    API is left out.
    """
    import importlib
    import os
    import sys
    import types

    try:
        return importlib.import_module(f"detectron2.export.{submodule}")
    except ModuleNotFoundError as e:
        if e.name is None or not e.name.startswith("caffe2"):
            raise
    import detectron2

    package = types.ModuleType("detectron2.export")
    package.__path__ = [os.path.join(os.path.dirname(detectron2.__file__), "export")]
    package.__doc__ = "detectron2.export without its Caffe2 API (see panoptic_ext.compat)"
    sys.modules["detectron2.export"] = package
    return importlib.import_module(f"detectron2.export.{submodule}")


@functools.lru_cache(maxsize=None)
def detectron2_sgd_foreach() -> Optional[bool]:
    """
    The ``foreach`` argument detectron2's own ``build_optimizer`` gives ``torch.optim.SGD``:
    True on detectron2 main, None (torch's default) on v0.6. Read from an optimizer it builds.
    """
    import torch
    from detectron2.config import get_cfg
    from detectron2.solver import build_optimizer

    return build_optimizer(get_cfg(), torch.nn.Linear(1, 1)).defaults.get("foreach")


def model_zoo_config_file(config_path: str) -> str:
    """
    Path of a config in detectron2's model zoo, as ``detectron2.model_zoo.get_config_file``
    returns it, without importing ``detectron2.model_zoo``: on detectron2 main that imports
    ``pkg_resources``, which setuptools >= 81 no longer has.

    Args:
        config_path (str): relative to the zoo's configs, e.g.
            "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml".
    """
    import detectron2

    configs = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs")
    path = os.path.join(configs, config_path)
    if not os.path.isfile(path):
        raise RuntimeError(
            f"{config_path} not available in detectron2's model zoo: {path} does not exist "
            f"(detectron2 installed without its model-zoo configs?)"
        )
    return path


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
                "(DATALOADER.ON_BAD_RECORD skip): the warnings above name each file "
                "and its problem; fix the dataset (or its registration paths)"
            )


@functools.lru_cache(maxsize=None)
def map_dataset_can_skip() -> bool:
    """
    Whether detectron2's ``MapDataset`` can skip a record whose mapper returned None (it retries
    another record). detectron2 main can; v0.6 retries with ``random.sample(a_set, k=1)``, which
    raises TypeError on Python >= 3.11. Found out by trying it on a two-record dataset.
    """
    from detectron2.data.common import MapDataset

    try:
        return MapDataset([0, 1], lambda x: x or None)[0] == 1
    except TypeError:
        return False


def fix_map_dataset_retry(dataset) -> bool:
    """
    Let a detectron2 ``MapDataset`` skip records whose mapper returned None on both versions:
    replace its set of retry candidates by an equivalent sequence, in place. On v0.6 this fixes
    the retry (see :func:`map_dataset_can_skip`); on both, when no record is left, the retry
    stops with an error that says every record was skipped, instead of ``random.sample``'s
    "Sample larger than population".

    Returns:
        bool: whether ``dataset`` was such a ``MapDataset`` and now has the sequence.
    """
    from detectron2.data.common import MapDataset

    pool = getattr(dataset, "_fallback_candidates", None)
    if not isinstance(dataset, MapDataset) or not isinstance(pool, (set, frozenset)):
        return False
    dataset._fallback_candidates = _IndexPool(sorted(pool))
    return True


def simple_trainer_of(trainer):
    """The ``SimpleTrainer`` (optimizer, AMP grad scaler) inside a ``DefaultTrainer`` or the
    project's ``LazyTrainer``: detectron2 keeps it private (``_trainer``, no accessor), and v0.6's
    ``DefaultTrainer.state_dict`` leaves its state out (main saves it as ``"_trainer"``)."""
    return trainer._trainer


def default_trainer_results(trainer):
    """The results of a ``DefaultTrainer``'s last evaluation (None if none ran): detectron2 keeps
    them private (``_last_eval_results``) and returns them only with TEST.EXPECTED_RESULTS."""
    return getattr(trainer, "_last_eval_results", None)


def create_local_process_group(num_processes_per_machine: int) -> None:
    """detectron2's per-machine process group (read by ``comm.get_local_rank/size``), made as its
    ``launch`` makes it; every process must call this together. detectron2 main has
    ``comm.create_local_process_group``; v0.6 sets its module attribute inside ``launch`` only (no
    public API), so it is set here the same way."""
    from detectron2.utils import comm

    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_processes_per_machine)
        return
    import torch.distributed as dist

    machine = comm.get_rank() // num_processes_per_machine
    for i in range(comm.get_world_size() // num_processes_per_machine):
        group = dist.new_group(
            list(range(i * num_processes_per_machine, (i + 1) * num_processes_per_machine))
        )
        if i == machine:
            comm._LOCAL_PROCESS_GROUP = group


def forget_local_process_group() -> None:
    """Drop detectron2's per-machine group before its process group is destroyed (neither
    version has a public way; the group must not outlive the world)."""
    from detectron2.utils import comm

    comm._LOCAL_PROCESS_GROUP = None
