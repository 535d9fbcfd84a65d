"""Start-up checks of a config: clear errors for unknown keys, wrong types, bad choices and class
counts that do not fit the datasets, before a model is built or an iteration runs.

- :func:`merge_config`: yacs' ``merge_from_file`` / ``merge_from_list`` whose errors (yacs raises
  AssertionError or KeyError for unknown keys) become :class:`ConfigError` naming the source, the
  key, the value and, for a typo, the nearest existing keys.
- :func:`check_config`: value ranges (:data:`RANGE_RULES`, one table for YAML keys and
  LazyConfig paths), choices of the project's ``NAME``-like keys, ``TEST.AUG`` (when enabled),
  and :func:`check_config_against_datasets`: ``ROI_HEADS.NUM_CLASSES`` and
  ``SEM_SEG_HEAD.NUM_CLASSES`` against the metadata of every dataset in ``DATASETS``.
"""

import difflib
import logging
import os
import re
from collections import abc
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from panoptic_ext.config import upgrade_deprecated_keys
from panoptic_ext.data.class_counts import class_count_problems, config_class_counts
from panoptic_ext.data.class_layout import SEM_SEG_THINGS_MODES, PanopticClassLayout

__all__ = [
    "ConfigError", "LAZY_RANGE_KEYS", "RANGE_RULES", "RangeRule", "check_choices", "check_config",
    "check_config_against_datasets", "check_config_ranges", "check_ranges",
    "check_test_aug_config", "merge_config", "range_problem",
]  # fmt: skip

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


def _check_yaml_config_file(path: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist")
    if path.endswith(".py"):
        twin = os.path.splitext(path)[0] + ".yaml"
        hint = f" (its YAML twin: {twin})" if os.path.isfile(twin) else ""
        raise ConfigError(
            f"config file {path} is a Python config (LazyConfig), but this command reads YAML "
            f"configs (KEY VALUE overrides): give it a .yaml config{hint}; train_net.py trains "
            "and evaluates both kinds"
        )


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
        _check_yaml_config_file(config_file)
        try:
            cfg.merge_from_file(config_file)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {config_file} is not valid YAML: {e}") from e
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

    from panoptic_ext.apps.train.run_dir import EXISTING_OUTPUT_CHOICES
    from panoptic_ext.apps.train.solver import OPTIMIZERS
    from panoptic_ext.data.mapper import ON_BAD_RECORD_CHOICES

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


def _get(cfg: CfgNode, key: str, *default: Any) -> Any:
    node = cfg
    for part in key.split("."):
        if default and part not in node:  # a config without that key (e.g. no RUN node)
            return default[0]
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


# ---- value ranges -------------------------------------------------------------------------------
# Valid values -> the test of a number.
_VALID = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "[0, 1]": lambda v: 0 <= v <= 1,
    "(0, 1]": lambda v: 0 < v <= 1,
    "[0, 1)": lambda v: 0 <= v < 1,
}


class RangeRule(NamedTuple):
    """The valid values of one setting (a key of ``_VALID``), named in both config languages
    (None where a language has no such key); list values are checked element by element."""

    yaml_key: Optional[str]  # SOLVER.MAX_ITER
    lazy_key: Optional[str]  # train.max_iter
    valid: str  # "> 0"
    meaning: str  # said in the message


# The one table of value ranges, for YAML configs (check_config) and Python configs (check_ranges
# on LazyConfig paths): YAML key | LazyConfig path | valid values | meaning ("-": none).
_RANGE_TABLE = """
SOLVER.MAX_ITER | train.max_iter | > 0 | the iterations to train
SOLVER.IMS_PER_BATCH | dataloader.train.total_batch_size | > 0 | images per step
SOLVER.BASE_LR | optimizer.lr | > 0 | the learning rate
SOLVER.MOMENTUM | optimizer.momentum | [0, 1) | SGD's momentum
SOLVER.BETAS | optimizer.betas | [0, 1) | Adam's coefficients
SOLVER.WEIGHT_DECAY | optimizer.weight_decay | >= 0 | the weight decay
SOLVER.GAMMA | lr_multiplier.gamma | > 0 | the learning-rate step factor
SOLVER.STEPS | lr_multiplier.steps | > 0 | iterations of the learning-rate steps
SOLVER.WARMUP_ITERS | lr_multiplier.warmup_iters | >= 0 | warm-up iterations
SOLVER.WARMUP_FACTOR | lr_multiplier.warmup_factor | [0, 1] | the first warm-up factor
SOLVER.CHECKPOINT_PERIOD | train.checkpointer.period | > 0 | iterations between checkpoints
SOLVER.CHECKPOINT_MAX_TO_KEEP | train.checkpointer.max_to_keep | >= 0 | checkpoints kept, 0: all
SOLVER.CLIP_GRADIENTS.CLIP_VALUE | optimizer.clip_gradients.clip_value | > 0 | clipping threshold
TEST.EVAL_PERIOD | train.eval_period | >= 0 | iterations between evaluations, 0: at the end
- | train.log_period | > 0 | iterations between metric writes
TEST.DETECTIONS_PER_IMAGE | model.roi_heads.box_predictor.test_topk_per_image | > 0 | detections
DATALOADER.NUM_WORKERS | dataloader.train.num_workers | >= 0 | data loading processes
- | dataloader.test.num_workers | >= 0 | data loading processes
RUN.WEIGHTS_DOWNLOAD_TIMEOUT | train.download_timeout | > 0 | seconds a download may stall
MODEL.ROI_HEADS.NUM_CLASSES | model.roi_heads.num_classes | > 0 | thing classes
MODEL.SEM_SEG_HEAD.NUM_CLASSES | model.sem_seg_head.num_classes | > 0 | semantic labels
MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE | model.roi_heads.batch_size_per_image | > 0 | samples
MODEL.ROI_HEADS.POSITIVE_FRACTION | model.roi_heads.positive_fraction | (0, 1] | a fraction
MODEL.RPN.BATCH_SIZE_PER_IMAGE | model.proposal_generator.batch_size_per_image | > 0 | samples
MODEL.RPN.POSITIVE_FRACTION | model.proposal_generator.positive_fraction | (0, 1] | a fraction
MODEL.ROI_HEADS.SCORE_THRESH_TEST | model.roi_heads.box_predictor.test_score_thresh | [0, 1] | a score
MODEL.ROI_HEADS.NMS_THRESH_TEST | model.roi_heads.box_predictor.test_nms_thresh | [0, 1] | an IoU
MODEL.SEM_SEG_HEAD.LOSS_WEIGHT | model.sem_seg_head.loss_weight | >= 0 | lambda_s
MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT | - | >= 0 | lambda_i
MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH | model.postprocessor.overlap_threshold | [0, 1] | a share
MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT | model.postprocessor.stuff_area_threshold | >= 0 | px
MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH | model.postprocessor.instance_score_threshold | [0, 1] | a score
INPUT.MIN_SIZE_TRAIN | - | > 0 | pixels
INPUT.MAX_SIZE_TRAIN | - | > 0 | pixels
INPUT.MIN_SIZE_TEST | - | >= 0 | pixels, 0: no resize
INPUT.MAX_SIZE_TEST | - | > 0 | pixels
"""  # noqa: E501


RANGE_RULES: Tuple[RangeRule, ...] = tuple(
    RangeRule(*(None if part.strip() == "-" else part.strip() for part in line.split("|")))
    for line in _RANGE_TABLE.strip().splitlines()
)
_RULES = {k: r for r in RANGE_RULES for k in (r.yaml_key, r.lazy_key) if k}
LAZY_RANGE_KEYS: Tuple[str, ...] = tuple(r.lazy_key for r in RANGE_RULES if r.lazy_key)


def range_problem(key: str, value: Any) -> Optional[str]:
    """
    What is wrong with ``value`` for ``key`` by :data:`RANGE_RULES`, or None (fine, or no rule).

    Args:
        key (str): a yacs key (``SOLVER.MAX_ITER``) or a LazyConfig path (``train.max_iter``);
            the message names it as given.
        value: its value; a list or tuple is checked element by element, values that are not
            numbers are left to the type checks.
    """
    rule = _RULES.get(key)
    if rule is None:
        return None
    many = isinstance(value, abc.Sequence) and not isinstance(value, str)  # also ListConfig
    values = list(value) if many else [value]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if all(_VALID[rule.valid](v) for v in numbers):
        return None
    each = "every value " if many else ""
    within = "in " if rule.valid[0] in "([" else ""
    return f"{key} = {value!r}: {each}must be {within}{rule.valid} ({rule.meaning})"


def check_ranges(values: Dict[str, Any], source: str = "config") -> None:
    """
    Check ``{key: value}`` against :data:`RANGE_RULES` (None values are skipped).

    Raises:
        ConfigError: naming ``source`` and every key out of range, with its valid range.
    """
    problems = [p for p in (range_problem(k, v) for k, v in values.items() if v is not None) if p]
    if problems:
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(problems))


def check_config_ranges(cfg: CfgNode) -> None:
    """:func:`check_ranges` of every yacs key of :data:`RANGE_RULES` (clip value only when
    clipping is enabled)."""
    values = {r.yaml_key: _get(cfg, r.yaml_key, None) for r in RANGE_RULES if r.yaml_key}
    if not cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        values.pop("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", None)
    check_ranges(values)


# ---- class counts ------------------------------------------------------------------------------
def _dataset_names(cfg: CfgNode) -> List[tuple]:
    return [("DATASETS.TRAIN", i, n) for i, n in enumerate(cfg.DATASETS.TRAIN)] + [
        ("DATASETS.TEST", i, n) for i, n in enumerate(cfg.DATASETS.TEST)
    ]


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
            problems.extend(class_count_problems(layout, name, *config_class_counts(cfg)))
        layouts[name] = layout
    if problems:
        raise ConfigError("config does not fit its datasets:\n  " + "\n  ".join(problems))
    return layouts


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
    All start-up checks: :func:`check_config_ranges`, :func:`check_choices`,
    :func:`check_test_aug_config`, then (``datasets=True``) :func:`check_config_against_datasets`.
    Cheap: reads no image and builds no model.

    Raises:
        ConfigError: listing every problem found by a check.
    """
    check_config_ranges(cfg)
    check_choices(cfg)
    check_test_aug_config(cfg)
    if datasets:
        check_config_against_datasets(cfg)
