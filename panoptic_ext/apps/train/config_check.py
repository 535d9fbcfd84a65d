"""Start-up checks of a config: clear errors for unknown keys, wrong types, bad choices and class
counts that do not fit the datasets, before a model is built or an iteration runs.

- :func:`merge_config`: yacs' ``merge_from_file`` / ``merge_from_list`` whose errors (yacs raises
  AssertionError or KeyError for unknown keys) become :class:`ConfigError` naming the source, the
  key, the value and, for a typo, the nearest existing keys.
- :func:`check_config`: choices of the project's ``NAME``-like keys, ``TEST.AUG`` (when enabled),
  and :func:`check_config_against_datasets`: ``ROI_HEADS.NUM_CLASSES`` and
  ``SEM_SEG_HEAD.NUM_CLASSES`` against the metadata of every dataset in ``DATASETS``.
"""

import difflib
import logging
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from panoptic_ext.config import upgrade_deprecated_keys
from panoptic_ext.data.class_layout import SEM_SEG_THINGS_MODES, PanopticClassLayout

__all__ = [
    "ConfigError",
    "merge_config",
    "check_config",
    "check_choices",
    "check_config_against_datasets",
    "check_test_aug_config",
]

logger = logging.getLogger(__name__)

_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key:?\s*([\w.]+)")
_TYPE_MISMATCH = re.compile(
    r"Type mismatch \((.+?) vs\. (.+?)\) with values \((.*) vs\. (.*)\) for config key: ([\w.]+)",
    re.S,
)


class ConfigError(ValueError):
    """A config key is unknown, has a wrong type or value, or does not fit the datasets."""


def _all_keys(cfg: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for k, v in cfg.items():
        full = prefix + k
        keys.extend(_all_keys(v, full + ".") if isinstance(v, CfgNode) else [full])
    return keys


def _type_name(text: str) -> str:
    m = re.match(r"<class '(\w+)'>", text.strip())
    return m.group(1) if m else text.strip()


def _article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _explain(error: BaseException, source: str, cfg: CfgNode) -> str:
    """A readable message for a yacs merge error."""
    text = str(error.args[0]) if error.args else str(error)
    m = _UNKNOWN_KEY.search(text)
    if m:
        key = m.group(1)
        close = difflib.get_close_matches(key, _all_keys(cfg), n=2, cutoff=0.75)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"{source}: unknown config key {key}{hint}"
    m = _TYPE_MISMATCH.search(text)
    if m:
        expected, got, default, value, key = m.groups()
        return (
            f"{source}: {key} = {value!r} has type {_type_name(got)}, but {key} takes "
            f"{_article(_type_name(expected))} (default {default})"
        )
    return f"{source}: {text}"


def merge_config(
    cfg: CfgNode, config_file: Optional[str] = None, opts: Optional[Sequence[str]] = None
) -> CfgNode:
    """
    Merge a YAML file then ``KEY VALUE`` overrides into ``cfg`` (in place), as yacs does, but
    raise :class:`ConfigError` naming the file or the command line, the key and the value.

    Args:
        cfg (CfgNode): a config holding every known key (detectron2's + panoptic_ext's).
        config_file (str): a YAML config, or None.
        opts (list[str]): ``["KEY", "VALUE", ...]``.

    Returns:
        CfgNode: ``cfg``.
    """
    if config_file:
        try:
            cfg.merge_from_file(config_file)
        except (AssertionError, KeyError, ValueError, TypeError) as e:
            raise ConfigError(_explain(e, f"config file {config_file}", cfg)) from e
    if opts:
        opts = list(opts)
        if len(opts) % 2:
            raise ConfigError(
                f"command line overrides must be KEY VALUE pairs; got an odd number of items "
                f"{opts} (is the value of {opts[-1]} missing?)"
            )
        try:
            cfg.merge_from_list(opts)
        except (AssertionError, KeyError, ValueError, TypeError) as e:
            raise ConfigError(_explain(e, "command line override", cfg)) from e
    if "PANOPTIC_EXT" in cfg.MODEL:
        upgrade_deprecated_keys(cfg)
    return cfg


# ---- choices ------------------------------------------------------------------------------------
def _registered(registry: Any) -> List[str]:
    return sorted(name for name, _ in registry)


def _choices(cfg: CfgNode) -> Dict[str, Iterable[str]]:
    """Key -> allowed values, for the keys whose registry or list is importable now."""
    from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY

    from panoptic_ext.data.mapper import ON_BAD_RECORD_CHOICES
    from panoptic_ext.apps.train.run_dir import EXISTING_OUTPUT_CHOICES
    from panoptic_ext.apps.train.solver import OPTIMIZERS

    ret: Dict[str, Iterable[str]] = {
        "MODEL.META_ARCHITECTURE": _registered(META_ARCH_REGISTRY),
        "MODEL.PANOPTIC_EXT.SEM_SEG_THINGS": SEM_SEG_THINGS_MODES,
        "SOLVER.OPTIMIZER": sorted(OPTIMIZERS),
        "DATALOADER.ON_BAD_RECORD": ON_BAD_RECORD_CHOICES,
    }
    if "RUN" in cfg:
        ret["RUN.EXISTING_OUTPUT"] = EXISTING_OUTPUT_CHOICES
    if cfg.MODEL.META_ARCHITECTURE in ("PanopticFPN", "PanopticFPNExt", "SemanticSegmentor"):
        ret["MODEL.SEM_SEG_HEAD.NAME"] = _registered(SEM_SEG_HEADS_REGISTRY)
    if "EVAL_TASKS" in cfg.TEST:
        from panoptic_ext.evaluation.build import EVAL_TASKS

        ret["TEST.EVAL_TASKS"] = EVAL_TASKS
    from panoptic_ext import modeling

    for key, registry_name in (
        ("MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME", "LOSS_WEIGHT_SCHEDULE_REGISTRY"),
        ("MODEL.PANOPTIC_EXT.POSTPROCESS.NAME", "PANOPTIC_POSTPROCESSOR_REGISTRY"),
    ):
        registry = getattr(modeling, registry_name, None)
        if registry is not None:
            ret[key] = _registered(registry)
    return ret


def _get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_choices(cfg: CfgNode) -> None:
    """
    Raise :class:`ConfigError` if a key that picks a registered component or a mode (meta
    architecture, semantic head, SEM_SEG_THINGS, loss-weight schedule, post-processor, optimizer,
    DATA.ON_BAD_RECORD, EVAL.TASKS, EXISTING_OUTPUT) has a value that is not one of its choices.
    """
    problems = []
    for key, allowed in _choices(cfg).items():
        allowed = list(allowed)
        value = _get(cfg, key)
        values = list(value) if isinstance(value, (list, tuple)) else [value]  # list-valued keys
        for v in values:
            if v not in allowed:
                close = difflib.get_close_matches(str(v), [str(a) for a in allowed], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                shown = f"{key} = {value!r}" + (f": {v!r}" if v is not value else "")
                problems.append(f"{shown} is not one of {allowed}{hint}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


# ---- class counts ------------------------------------------------------------------------------
def _dataset_names(cfg: CfgNode) -> List[tuple]:
    return [("DATASETS.TRAIN", i, n) for i, n in enumerate(cfg.DATASETS.TRAIN)] + [
        ("DATASETS.TEST", i, n) for i, n in enumerate(cfg.DATASETS.TEST)
    ]


def _class_list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_config_against_datasets(cfg: CfgNode) -> Dict[str, PanopticClassLayout]:
    """
    Check that every dataset of ``DATASETS.TRAIN`` / ``DATASETS.TEST`` is registered and that the
    model's class counts fit its panoptic metadata (see :class:`PanopticClassLayout`):
    ``ROI_HEADS.NUM_CLASSES`` = T thing classes, and ``SEM_SEG_HEAD.NUM_CLASSES`` = S + 1
    (SEM_SEG_THINGS "merged") or T + S ("all"). Datasets without panoptic metadata (e.g. a plain
    image folder for a demo) are skipped.

    Returns:
        dict[str, PanopticClassLayout]: dataset name -> its class layout (checked ones).

    Raises:
        ConfigError: naming the key, its value, the dataset and the value it needs.
    """
    mode = cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS
    if mode not in SEM_SEG_THINGS_MODES:
        raise ConfigError(
            f"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS = {mode!r} is not one of {SEM_SEG_THINGS_MODES}"
        )
    registered = set(DatasetCatalog.list())
    layouts: Dict[str, PanopticClassLayout] = {}
    problems: List[str] = []
    for key, i, name in _dataset_names(cfg):
        if name not in registered:
            close = difflib.get_close_matches(name, sorted(registered), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            problems.append(f"{key}[{i}] = {name!r} is not a registered dataset{hint}")
            continue
        metadata = MetadataCatalog.get(name)
        if not hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
            logger.info("Dataset %s has no panoptic metadata: class counts not checked", name)
            continue
        layout = PanopticClassLayout.from_metadata(
            metadata, mode, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        )
        if layout not in layouts.values():  # one message for a train and a test split alike
            problems.extend(_class_count_problems(cfg, name, layout))
        layouts[name] = layout
    if problems:
        raise ConfigError("config does not fit its datasets:\n  " + "\n  ".join(problems))
    return layouts


def _class_count_problems(cfg: CfgNode, name: str, layout: PanopticClassLayout) -> List[str]:
    T, S, mode = layout.num_thing_classes, layout.num_stuff_classes, layout.sem_seg_things
    has_things = cfg.MODEL.META_ARCHITECTURE not in ("SemanticSegmentor",)
    has_sem_seg = cfg.MODEL.META_ARCHITECTURE not in ("GeneralizedRCNN",)
    described = (
        f"dataset {name!r} has {T} thing classes ({_class_list(layout.thing_names)}) and {S} "
        f"stuff classes ({_class_list(layout.stuff_names)})"
    )
    problems = []
    if has_things and T == 0:
        return [
            f"dataset {name!r} has no thing classes (no category with isthing 1; {S} stuff "
            f"classes: {_class_list(layout.stuff_names)}), but MODEL.META_ARCHITECTURE "
            f"{cfg.MODEL.META_ARCHITECTURE!r} has an instance branch, which needs at least one: "
            "mark the countable categories isthing 1, or train a semantic segmentation model "
            "(MODEL.META_ARCHITECTURE SemanticSegmentor)"
        ]
    roi = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if has_things and roi != T:
        problems.append(
            f"MODEL.ROI_HEADS.NUM_CLASSES = {roi}, but {described}: it needs "
            f"MODEL.ROI_HEADS.NUM_CLASSES {T}"
        )
    sem = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if has_sem_seg and sem != layout.num_sem_seg_classes:
        how = (
            f"{S} stuff + 1 'things' class"
            if mode == "merged"
            else f"{T} thing + {S} stuff classes"
        )
        problems.append(
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES = {sem}, but {described}, so with "
            f"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS = {mode!r} it needs "
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {layout.num_sem_seg_classes} ({how})"
        )
    return problems


def check_test_aug_config(cfg: CfgNode) -> None:
    """
    With ``TEST.AUG.ENABLED``, check ``TEST.AUG.MIN_SIZES / MAX_SIZE / FLIP``
    (:func:`~panoptic_ext.modeling.check_test_aug`).

    Raises:
        ConfigError: naming the key, its value and what is expected.
    """
    from panoptic_ext.modeling import check_test_aug

    if not cfg.TEST.AUG.ENABLED:
        return
    try:
        check_test_aug(cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP)
    except ValueError as e:
        raise ConfigError(f"invalid config (TEST.AUG.ENABLED is True):\n  {e}") from e


def check_config(cfg: CfgNode, *, datasets: bool = True) -> None:
    """
    All start-up checks: :func:`check_choices`, :func:`check_test_aug_config`, then
    (``datasets=True``) :func:`check_config_against_datasets`. Cheap: reads no image and builds
    no model.

    Raises:
        ConfigError: listing every problem found by a check.
    """
    check_choices(cfg)
    check_test_aug_config(cfg)
    if datasets:
        check_config_against_datasets(cfg)
