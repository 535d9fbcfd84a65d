"""Config set-up shared by ``train_net.py``, ``demo/demo.py``, ``tools/main_job.py`` and tests."""

import argparse
from typing import Optional, Sequence

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup

from ..config import add_panoptic_ext_config

__all__ = ["get_panoptic_cfg", "setup_cfg"]


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
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg


def setup_cfg(args: argparse.Namespace, *, log: bool = True) -> CfgNode:
    """
    The frozen config of a ``train_net.py`` run: ``args.config_file`` + ``args.opts``, then
    detectron2's ``default_setup`` (loggers, environment info, ``config.yaml`` backup in
    OUTPUT_DIR, seeding).

    Args:
        args (argparse.Namespace): parsed by detectron2's ``default_argument_parser``.
        log (bool): whether to run ``default_setup``; False leaves logging and seeding alone.
    """
    cfg = get_panoptic_cfg(args.config_file, args.opts)
    cfg.freeze()
    if log:
        default_setup(cfg, args)
    return cfg
