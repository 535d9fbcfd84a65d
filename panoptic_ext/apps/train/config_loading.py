"""Config set-up shared by ``train_net.py``, ``demo/demo.py``, ``tools/main_job.py`` and tests."""

import argparse
import contextlib
from typing import Any, Iterator, Optional, Sequence

import detectron2.engine.defaults as d2_defaults
from detectron2.config import CfgNode, get_cfg
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.train.collect_env import collect_env_info
from panoptic_ext.compat import detectron2_has_compiled_ops
from panoptic_ext.config import add_panoptic_ext_config
from panoptic_ext.apps.train.config_check import check_config, merge_config

__all__ = ["default_setup", "get_panoptic_cfg", "setup_cfg"]


@contextlib.contextmanager
def _panoptic_ext_env_info() -> Iterator[None]:
    # detectron2's collect_env_info() asks its compiled ops for their compiler version, which
    # fails without them; panoptic_ext's report says which ops are there instead.
    original = d2_defaults.collect_env_info
    d2_defaults.collect_env_info = collect_env_info
    try:
        yield
    finally:
        d2_defaults.collect_env_info = original


def default_setup(cfg: Any, args: Any) -> None:
    """
    detectron2's ``default_setup`` (loggers, environment report, ``config.yaml`` backup in
    OUTPUT_DIR, seeding), also when detectron2 was installed without its compiled ops, and a
    logger for panoptic_ext's own messages.

    Args:
        cfg (CfgNode or DictConfig): a yacs config or a Python config (LazyConfig).
        args: the parsed command line.
    """
    if detectron2_has_compiled_ops():
        d2_defaults.default_setup(cfg, args)
    else:
        with _panoptic_ext_env_info():
            d2_defaults.default_setup(cfg, args)
    # detectron2 sets up its own loggers (and fvcore's) only.
    output_dir = cfg.OUTPUT_DIR if isinstance(cfg, CfgNode) else cfg.train.output_dir
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="panoptic_ext")


def get_panoptic_cfg(
    config_file: Optional[str] = None, opts: Optional[Sequence[str]] = None
) -> CfgNode:
    """
    detectron2's default config with panoptic_ext's keys, merged with a YAML file and
    ``KEY VALUE`` overrides.

    Args:
        config_file (str): a YAML config, or None.
        opts (list[str]): ``["KEY", "VALUE", ...]`` overrides applied after the file.
    """
    cfg = get_cfg()
    add_panoptic_ext_config(cfg)
    # yacs' merges, with errors naming the file or override, the key and the value
    return merge_config(cfg, config_file, opts)


def setup_cfg(args: argparse.Namespace, *, log: bool = True) -> CfgNode:
    """
    The frozen config of a ``train_net.py`` run: ``args.config_file`` + ``args.opts``, checked
    (:func:`~panoptic_ext.apps.train.config_check.check_config`), then detectron2's
    ``default_setup`` (loggers, environment info, ``config.yaml`` backup in OUTPUT_DIR, seeding).

    Args:
        args (argparse.Namespace): parsed by detectron2's ``default_argument_parser``.
        log (bool): whether to run ``default_setup``; False leaves logging and seeding alone.
    """
    cfg = get_panoptic_cfg(args.config_file, args.opts)
    cfg.freeze()
    check_config(cfg)  # bad choices and class counts fail here, before any model is built
    if log:
        default_setup(cfg, args)
    return cfg
