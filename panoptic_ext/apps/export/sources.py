"""
What an export needs from a config, for both config languages: the model (built on the CPU, in
eval mode, weights not loaded yet), its weights, the test-time resize, the input format, the
host-side post-processor's options, the classes and the config text saved beside the export.
YAML (yacs) configs and Python (LazyConfig) configs give the same :class:`ExportSource`.
"""

import inspect
import json
import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from torch import nn

from panoptic_ext.modeling.panoptic_postprocessor import PANOPTIC_POSTPROCESSOR_REGISTRY

__all__ = ["ExportSource", "export_source", "load_export_config", "PYTHON_CONFIG_SUFFIXES"]

logger = logging.getLogger(__name__)

# Python (LazyConfig) config files; any other suffix is read as a YAML (yacs) config.
PYTHON_CONFIG_SUFFIXES = (".py",)


@dataclass
class ExportSource:
    """
    Attributes:
        model (nn.Module): the model, on the CPU, in eval mode, without its weights.
        weights (str): checkpoint to load ("" for none).
        allow_partial_weights (bool): load it even if some weights do not fit.
        weights_key (str): the config key of ``weights`` in the user's config language.
        input_format (str): "BGR" or "RGB".
        min_size_test, max_size_test (int): the test-time ResizeShortestEdge.
        max_size_key (str): the config key of ``max_size_test``.
        postprocessor (dict): ``{"name": registered name, "kwargs": {...}}``.
        classes (dict): the test dataset's name, class names and id mappings.
        config_text (str): the config, saved as ``config.yaml`` beside the export.
        config_language (str): "yaml" or "python".
    """

    model: nn.Module
    weights: str
    allow_partial_weights: bool
    weights_key: str
    input_format: str
    min_size_test: int
    max_size_test: int
    max_size_key: str
    postprocessor: Dict[str, Any]
    classes: Dict[str, Any]
    config_text: str
    config_language: str


def load_export_config(config_file: str, opts: Sequence[str] = ()):
    """
    The config of ``config_file`` by its extension: a Python config (``.py``, LazyConfig, with
    ``key=value`` overrides) as a DictConfig, otherwise a YAML config (``KEY VALUE`` overrides)
    as a CfgNode with panoptic_ext's keys.
    """
    if config_file.endswith(PYTHON_CONFIG_SUFFIXES):
        from panoptic_ext.apps.train.lazy_config import load_lazy_config

        return load_lazy_config(config_file, list(opts))
    from panoptic_ext.apps.train.config_loading import get_panoptic_cfg

    return get_panoptic_cfg(config_file, list(opts))


def _classes(dataset: Optional[str]) -> Dict[str, Any]:
    """Class names and the dataset's id mappings of the test dataset, when registered."""
    if not dataset or dataset not in MetadataCatalog.list():
        return {"dataset": None}
    metadata = MetadataCatalog.get(dataset)
    out: Dict[str, Any] = {"dataset": dataset}
    for key in ("thing_classes", "stuff_classes"):
        if hasattr(metadata, key):
            out[key] = list(getattr(metadata, key))
    for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
        if hasattr(metadata, key):
            out[key] = {str(k): int(v) for k, v in getattr(metadata, key).items()}
    return out


def _postprocessor_spec(postprocessor: Any) -> Dict[str, Any]:
    """The registered name of a built post-processor and the arguments that rebuild it."""
    names = [name for name, cls in PANOPTIC_POSTPROCESSOR_REGISTRY if cls is type(postprocessor)]
    if not names:
        raise ValueError(
            f"model.postprocessor: {type(postprocessor).__name__} is not a registered panoptic "
            "post-processor; the exported model's host side rebuilds it by name"
        )
    init = inspect.signature(type(postprocessor).__init__)
    kwargs = {
        k: getattr(postprocessor, k)
        for k, p in init.parameters.items()
        if p.kind == p.KEYWORD_ONLY and hasattr(postprocessor, k)
    }
    return {"name": names[0], "kwargs": json.loads(json.dumps(kwargs))}  # tuples -> lists


def _yaml_source(cfg: CfgNode) -> ExportSource:
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    name = cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.NAME
    kwargs = PANOPTIC_POSTPROCESSOR_REGISTRY.get(name).from_config(cfg)
    return ExportSource(
        model=build_model(cfg).eval(),
        weights=cfg.MODEL.WEIGHTS,
        allow_partial_weights=bool(cfg.RUN.ALLOW_PARTIAL_WEIGHTS),
        weights_key="MODEL.WEIGHTS",
        input_format=cfg.INPUT.FORMAT,
        min_size_test=int(cfg.INPUT.MIN_SIZE_TEST),
        max_size_test=int(cfg.INPUT.MAX_SIZE_TEST),
        max_size_key="INPUT.MAX_SIZE_TEST",
        postprocessor={"name": name, "kwargs": json.loads(json.dumps(kwargs))},
        classes=_classes(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None),
        config_text=cfg.dump(),
        config_language="yaml",
    )


def _lazy_test_resize(cfg) -> T.ResizeShortestEdge:
    from detectron2.config import instantiate

    key = "dataloader.test.mapper.augmentations"
    try:
        augmentations = instantiate(cfg.dataloader.test.mapper.augmentations)
    except Exception as e:  # a missing key or a target that cannot be built
        raise ValueError(f"{key}: the export needs the test-time resize from it: {e}") from e
    augmentations = list(augmentations)
    if len(augmentations) != 1 or not isinstance(augmentations[0], T.ResizeShortestEdge):
        raise ValueError(
            f"{key}: the export resizes images as one ResizeShortestEdge (as the YAML path's "
            f"INPUT.MIN/MAX_SIZE_TEST); got {[type(a).__name__ for a in augmentations]}"
        )
    resize = augmentations[0]
    if len(set(resize.short_edge_length)) != 1:
        raise ValueError(
            f"{key}[0].short_edge_length: the export needs one test size, got "
            f"{list(resize.short_edge_length)}"
        )
    return resize


def _lazy_source(cfg) -> ExportSource:
    from detectron2.config import instantiate

    from panoptic_ext.apps.train.lazy_config import lazy_config_text

    resize = _lazy_test_resize(cfg)
    model = instantiate(cfg.model).to("cpu").eval()
    if not hasattr(model, "postprocessor") or not hasattr(model, "input_format"):
        raise ValueError(
            f"model: the exporter handles PanopticFPNExt models only, not {type(model).__name__}"
        )
    names = cfg.dataloader.test.dataset.names
    dataset = names if isinstance(names, str) else (list(names) or [None])[0]
    return ExportSource(
        model=model,
        weights=cfg.train.init_checkpoint or "",
        allow_partial_weights=bool(cfg.train.get("allow_partial_weights", False)),
        weights_key="train.init_checkpoint",
        input_format=model.input_format,
        min_size_test=int(resize.short_edge_length[0]),
        max_size_test=int(resize.max_size),
        max_size_key="dataloader.test.mapper.augmentations[0].max_size",
        postprocessor=_postprocessor_spec(model.postprocessor),
        classes=_classes(dataset),
        config_text=lazy_config_text(cfg),  # LazyConfig YAML: targets as import paths
        config_language="python",
    )


def export_source(cfg) -> ExportSource:
    """:class:`ExportSource` of a YAML config (CfgNode) or a Python config (DictConfig)."""
    if isinstance(cfg, CfgNode):
        return _yaml_source(cfg)
    from omegaconf import DictConfig

    if isinstance(cfg, DictConfig):
        return _lazy_source(cfg)
    raise TypeError(f"a config must be a CfgNode or a LazyConfig DictConfig, got {type(cfg)}")
