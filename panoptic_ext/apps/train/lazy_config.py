"""Python configs (detectron2's LazyConfig): loading with the project's ``train`` defaults, checked
``key=value`` overrides, argument checks of every ``L(...)`` node, class counts checked against
the datasets, and the config as text (saved in checkpoints, compared by ``--resume``).

A Python config defines ``model``, ``dataloader`` (``train``, ``test``, ``evaluator``),
``optimizer``, ``lr_multiplier`` and ``train`` (see ``configs/common/``).
"""

import difflib
import inspect
from typing import Any, Dict, List, Sequence

import yaml
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from panoptic_ext.apps.train.config_check import LAZY_RANGE_KEYS, ConfigError, check_ranges

__all__ = [
    "DEFAULT_TRAIN",
    "LAZY_CONFIG_KEYS",
    "check_lazy_arguments",
    "check_lazy_class_counts",
    "lazy_config_text",
    "load_lazy_config",
    "output_ids",
]

LAZY_CONFIG_KEYS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")

# ``train`` keys a config may leave out: detectron2's common/train.py plus the project's run
# options (the YAML path's MODEL.PANOPTIC_EXT.* run keys).
DEFAULT_TRAIN: Dict[str, Any] = {
    "output_dir": "./output",
    "init_checkpoint": "",
    "max_iter": 90000,
    "amp": {"enabled": False},
    "ddp": {"broadcast_buffers": False, "find_unused_parameters": False, "fp16_compression": False},
    # max_to_keep: newest periodic checkpoints kept (0: all); model_final.pth is always kept
    "checkpointer": {"period": 5000, "max_to_keep": 3},
    "eval_period": 5000,
    "log_period": 20,
    "device": "cuda",
    "seed": -1,
    "cudnn_benchmark": False,
    "allow_partial_weights": False,  # load init_checkpoint even if some weights do not fit
    "download_timeout": 60.0,  # seconds a download of init_checkpoint may go without data
    "existing_output": "refuse",  # a new run in a used output_dir: refuse, move or overwrite
    "cpu_speedups": True,  # the CPU inference speed-ups for a CPU model at evaluation
}

_OVERRIDE_HINT = "overrides are key=value (e.g. train.max_iter=100)"


def _nearest(key: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(close)}?" if close else ""


def _accepted_arguments(target: Any):
    """Names ``target`` accepts as keyword arguments, or None if it takes ``**kwargs``."""
    names: List[str] = []
    callables = [c.__init__ for c in inspect.getmro(target)] if inspect.isclass(target) else []
    for fn in callables or [target]:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # builtins without a signature
            return None
        names.extend(p.name for p in params if p.kind != p.VAR_KEYWORD and p.name != "self")
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def _target(node: DictConfig, path: str) -> Any:
    target = node._target_
    if isinstance(target, str):
        try:
            return locate(target)
        except Exception as e:  # locate raises ImportError or others
            raise ConfigError(f"{path}._target_ = {target!r} cannot be imported: {e}") from e
    return target


def check_lazy_arguments(node: Any, path: str = "") -> None:
    """
    Check that every ``L(target)(...)`` node below ``node`` names only arguments its target
    accepts.

    Raises:
        ConfigError: naming the key (e.g. ``model.sem_seg_head.loss_weigt``), the target and
            the nearest accepted argument.
    """
    if isinstance(node, ListConfig):
        for i, child in enumerate(node):
            check_lazy_arguments(child, f"{path}.{i}" if path else str(i))
        return
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node:
        target = _target(node, path)
        accepted = _accepted_arguments(target)
        if accepted is not None:
            for key in node.keys():
                if key != "_target_" and key not in accepted:
                    name = getattr(target, "__qualname__", str(target))
                    raise ConfigError(
                        f"config key {path}.{key}: {name} has no argument {key!r}."
                        + _nearest(key, accepted)
                        + f" Its arguments: {', '.join(sorted(set(accepted)))}"
                    )
    for key, child in node.items_ex(resolve=False):  # an interpolation is checked where it points
        check_lazy_arguments(child, f"{path}.{key}" if path else key)


def _type_error(key: str, old: Any, value: Any) -> ConfigError:
    return ConfigError(
        f"override {key}={value!r}: {key} expects {type(old).__name__} (its value is {old!r}), "
        f"got {type(value).__name__}"
    )


def _checked_value(key: str, old: Any, value: Any) -> Any:
    if old is None or value is None or OmegaConf.is_config(old):
        return value
    if isinstance(old, bool) or isinstance(value, bool):
        if type(old) is not type(value):
            raise _type_error(key, old, value)
        return value
    if isinstance(old, float) and isinstance(value, int):
        return float(value)
    if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
        return value
    if type(old) is not type(value) and not (callable(old) and isinstance(value, str)):
        raise _type_error(key, old, value)
    return value


def _parent_and_leaf(cfg: DictConfig, key: str):
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(parts[:i]) or "the config"
            keys = list(node.keys()) if isinstance(node, DictConfig) else []
            raise ConfigError(
                f"override {key}: {where} has no key {part!r}." + _nearest(part, keys)
            )
        node = node[part]
    return node, parts[-1]


def _apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"override {text!r} is not key=value: {_OVERRIDE_HINT}")
        try:
            (parsed,) = OverridesParser.create().parse_overrides([text])
        except Exception as e:  # hydra's OverrideParseException
            raise ConfigError(f"cannot parse override {text!r}: {e}") from e
        key, value = parsed.key_or_group, parsed.value()
        parent, leaf = _parent_and_leaf(cfg, key)
        if not isinstance(parent, DictConfig):
            raise ConfigError(f"override {key}: {key.rsplit('.', 1)[0]} is not a config node")
        if leaf in parent:
            value = _checked_value(key, OmegaConf.select(cfg, key), value)
        elif "_target_" not in parent:
            raise ConfigError(
                f"override {key}: no such key."
                + _nearest(leaf, list(parent.keys()))
                + f" Keys there: {', '.join(map(str, parent.keys()))}"
            )
        OmegaConf.update(cfg, key, value, merge=True)


def load_lazy_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """
    Load a Python (or LazyConfig YAML) config, fill ``train`` keys it leaves out from
    :data:`DEFAULT_TRAIN`, apply ``key=value`` overrides and check every ``L(...)`` node's
    arguments and the value ranges of :data:`~panoptic_ext.apps.train.config_check.RANGE_RULES`.

    Raises:
        ConfigError: a missing top-level key, an override of an unknown key (with the nearest
            existing keys), a value of the wrong type or out of range, or an argument a target
            does not take.
    """
    cfg = LazyConfig.load(path)
    missing = [k for k in LAZY_CONFIG_KEYS if k not in cfg]
    if missing:
        raise ConfigError(
            f"{path} defines no {', '.join(missing)}: a Python config needs "
            f"{', '.join(LAZY_CONFIG_KEYS)} (see configs/common/)"
        )
    merged = OmegaConf.merge(OmegaConf.create(DEFAULT_TRAIN), cfg.train)
    cfg.train = merged
    _apply_overrides(cfg, list(overrides))
    check_lazy_arguments(cfg)
    check_ranges({k: OmegaConf.select(cfg, k, default=None) for k in LAZY_RANGE_KEYS}, path)
    return cfg


def check_lazy_class_counts(cfg: DictConfig) -> None:
    """
    ``model.roi_heads.num_classes`` and ``model.sem_seg_head.num_classes`` against the classes of
    the registered datasets in ``dataloader.{train,test}.dataset.names``: the one class-count
    check (:func:`panoptic_ext.data.class_counts.check_class_counts`), in LazyConfig paths.

    Raises:
        ConfigError: naming the keys, the dataset and the values it needs.
    """
    from panoptic_ext.data.class_counts import LAZY_CLASS_COUNT_KEYS, check_class_counts
    from panoptic_ext.data.label_space import dataset_class_layout

    things = OmegaConf.select(cfg, "model.postprocessor.sem_seg_things", default="merged")
    keys = LAZY_CLASS_COUNT_KEYS
    counts = [OmegaConf.select(cfg, k, default=None) for k in (keys.things, keys.sem_seg)]
    for split in ("train", "test"):
        names = OmegaConf.select(cfg.dataloader, f"{split}.dataset.names", default=None)
        for name in [names] if isinstance(names, str) else list(names or []):
            if name not in DatasetCatalog.list() or not hasattr(
                MetadataCatalog.get(name), "thing_dataset_id_to_contiguous_id"
            ):
                continue
            layout = dataset_class_layout(name, things)
            try:
                check_class_counts(layout, name, *counts, keys=keys)
            except ValueError as e:
                raise ConfigError(f"{e} (dataloader.{split})") from None


def output_ids(
    dataset_name: str, sem_seg_things: str = "merged", kind: str = "thing", convention="dataset"
):
    """
    A Python config's post-processor ``thing_ids`` (``kind`` "thing") or ``stuff_ids``
    ("stuff"): one half of :func:`panoptic_ext.data.label_space.output_category_ids` (the YAML
    path's MODEL.PANOPTIC_EXT.POSTPROCESS.CATEGORY_IDS).
    """
    from panoptic_ext.data.label_space import output_category_ids

    thing_ids, stuff_ids = output_category_ids(dataset_name, sem_seg_things, convention)
    return thing_ids if kind == "thing" else stuff_ids


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', value)}"
    return repr(value)


def lazy_config_text(cfg: DictConfig) -> str:
    """The config as YAML (targets as import paths, interpolations resolved), as saved in
    checkpoints and compared by ``--resume``."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that does not resolve: keep it as written
        container = OmegaConf.to_container(cfg, resolve=False)
    return yaml.safe_dump(_plain(container), sort_keys=False)
