"""Config set-up shared by ``train_net.py``, ``demo/demo.py``, ``tools/main_job.py`` and tests."""

import argparse
import logging
import os
from typing import Any, Optional, Sequence

import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.train.checkpoint_files import atomic_write_text
from panoptic_ext.apps.train.collect_env import collect_env_info
from panoptic_ext.apps.train.config_check import check_config, merge_config
from panoptic_ext.config import add_panoptic_ext_config

__all__ = ["default_setup", "get_panoptic_cfg", "save_config", "setup_cfg", "whole_number_at_least"]


def _output_dir(cfg: Any) -> str:
    return cfg.OUTPUT_DIR if isinstance(cfg, CfgNode) else cfg.train.output_dir


def save_config(cfg: Any, name: str = "config.yaml") -> Optional[str]:
    """Write the full config (YAML or Python config) to ``OUTPUT_DIR/name`` atomically, in the
    main process; returns the path (None where nothing was written)."""
    output_dir = _output_dir(cfg)
    if not output_dir or not comm.is_main_process():
        return None
    path = os.path.join(output_dir, name)
    if isinstance(cfg, CfgNode):
        atomic_write_text(cfg.dump(), path)
    else:
        tmp = os.path.join(output_dir, f".{name}.{os.getpid()}.tmp")
        LazyConfig.save(cfg, tmp)  # logs the error itself if the config is not serializable
        if not os.path.isfile(tmp):
            return None
        os.replace(tmp, path)
    logging.getLogger("detectron2").info("Full config saved to %s", path)
    return path


def default_setup(cfg: Any, args: Any, *, save: bool = True) -> None:
    """
    detectron2's ``default_setup``: loggers of detectron2, fvcore and panoptic_ext (to the
    console and ``OUTPUT_DIR/log.txt``), the environment report, the command line and config in
    the log, seeding, cuDNN benchmark, and with ``save`` the full config in
    ``OUTPUT_DIR/config.yaml``. Unlike detectron2's, it does not need detectron2's compiled ops
    (the report is :func:`collect_env_info`), and ``save=False`` leaves an earlier run's
    ``config.yaml`` alone (``--eval-only``, or ``--resume`` until its checkpoint is accepted:
    :func:`save_config` then).

    Args:
        cfg (CfgNode or DictConfig): a yacs config or a Python config (LazyConfig).
        args: the parsed command line.
        save (bool): write ``config.yaml`` now.
    """
    output_dir, rank = _output_dir(cfg), comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    for name in ("fvcore", "panoptic_ext"):
        setup_logger(output_dir, distributed_rank=rank, name=name)
    logger = setup_logger(output_dir, distributed_rank=rank)
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Environment info:\n%s", collect_env_info())
    logger.info("Command line arguments: %s", args)
    if getattr(args, "config_file", ""):
        with open(args.config_file) as f:
            logger.info("Contents of args.config_file=%s:\n%s", args.config_file, f.read())
    if isinstance(cfg, CfgNode):
        logger.info("Running with full config:\n%s", cfg.dump())
    if save:
        save_config(cfg)
    seed = cfg.SEED if isinstance(cfg, CfgNode) else cfg.train.seed
    seed_all_rng(None if seed < 0 else seed + rank)
    if not getattr(args, "eval_only", False):
        benchmark = cfg.CUDNN_BENCHMARK if isinstance(cfg, CfgNode) else cfg.train.cudnn_benchmark
        torch.backends.cudnn.benchmark = benchmark


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
    (:func:`~panoptic_ext.apps.train.config_check.check_config`), then :func:`default_setup`.

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


def whole_number_at_least(minimum: int):
    """An argparse ``type``: a whole number >= ``minimum``, else a message saying what was
    expected (for the tools' own count flags, e.g. ``--jobs``, ``--num-vis``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse
