"""``--resume`` against the config of the run it continues.

A resumed run rebuilds its model, data, schedule and hooks from the current config, but restores
the optimizer's hyper-parameters and the LR scheduler's base rates from the checkpoint: detectron2
would silently keep the old ``SOLVER.BASE_LR`` (and weight decay, momentum, ...) while
``config.yaml`` records the new ones. The project's Trainer applies the current values instead
(:meth:`panoptic_ext.apps.train.Trainer.load_state_dict`); here, before anything is written,
:func:`check_resume` lists every difference from the run's saved config (stored in each
checkpoint; ``config.yaml`` for older ones) and refuses the changes a resumed run cannot take.
"""

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from detectron2.config import CfgNode

__all__ = [
    "ResumeConfigError",
    "RunSettings",
    "as_run_settings",
    "apply_current_hyperparameters",
    "check_optimizer_state",
    "check_resume",
    "config_differences",
    "nothing_to_train",
    "read_saved_run",
]

logger = logging.getLogger(__name__)

_MISSING = "<missing>"
# Keys whose change a resumed run cannot take, and why.
_REFUSED = {
    "SOLVER.OPTIMIZER": "the checkpoint holds the state of the other optimizer",
}
# Keys that --resume does not use.
_NOT_USED = {
    "MODEL.WEIGHTS": "not used: --resume loads the checkpoint's weights",
}


class ResumeConfigError(ValueError):
    """``--resume`` asks for a change that the run cannot take, or for no iteration at all."""


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _normalised(cfg: CfgNode) -> Dict[str, Any]:
    # Through YAML, as config.yaml stores it: tuples become lists.
    return _flatten(CfgNode.load_cfg(cfg.dump()))


def _load_flat(text: str) -> Dict[str, Any]:
    return _flatten(CfgNode.load_cfg(text))


@dataclass
class RunSettings:
    """
    What the checks of a run's OUTPUT_DIR and ``--resume`` read from its config, in either config
    system (a yacs ``CfgNode``: :meth:`from_cfg`; a Python LazyConfig:
    :func:`panoptic_ext.apps.train.lazy_config.lazy_run_settings`). ``*_key`` name the keys in
    messages.
    """

    output_dir: str
    max_iter: int
    existing_output: str
    flat_config: Dict[str, Any]  # key -> value, as the saved config is read back
    load_saved: Callable[[str], Dict[str, Any]]  # a saved config's text -> flat_config
    refused: Dict[str, str] = field(default_factory=lambda: dict(_REFUSED))
    not_used: Dict[str, str] = field(default_factory=lambda: dict(_NOT_USED))
    max_iter_key: str = "SOLVER.MAX_ITER"
    existing_output_key: str = "RUN.EXISTING_OUTPUT"
    output_dir_key: str = "OUTPUT_DIR"
    weights_format: str = "MODEL.WEIGHTS {}"  # the override that loads a checkpoint's weights

    @classmethod
    def from_cfg(cls, cfg: CfgNode) -> "RunSettings":
        return cls(
            output_dir=cfg.OUTPUT_DIR,
            max_iter=cfg.SOLVER.MAX_ITER,
            existing_output=cfg.RUN.EXISTING_OUTPUT,
            flat_config=_normalised(cfg),
            load_saved=_load_flat,
        )


def as_run_settings(cfg: Union[CfgNode, RunSettings]) -> RunSettings:
    """``cfg`` itself if it is :class:`RunSettings`, else those of a yacs config."""
    return cfg if isinstance(cfg, RunSettings) else RunSettings.from_cfg(cfg)


def _differences(a: Dict[str, Any], b: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    return [
        (k, a.get(k, _MISSING), b.get(k, _MISSING))
        for k in sorted(set(a) | set(b))
        if a.get(k, _MISSING) != b.get(k, _MISSING)
    ]


def config_differences(saved: CfgNode, current: CfgNode) -> List[Tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` of every key that differs, sorted by key; a key
    missing on one side has the value ``"<missing>"``."""
    return _differences(_normalised(saved), _normalised(current))


def read_saved_run(output_dir: str) -> Tuple[str, Optional[int], Optional[str], str]:
    """
    What ``--resume`` would continue in ``output_dir``.

    Returns:
        (str, int or None, str or None, str): the last checkpoint's path, the iteration it was
        saved at (None if unknown), the run's config as YAML text (None if not found), and
        where that config came from.
    """
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        path = os.path.join(output_dir, f.read().strip())
    iteration, text, source = None, None, ""
    try:
        # mmap: only the small entries are read, not the weights.
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable: loading it later raises a CheckpointError naming it
        data = {}
    if isinstance(data, dict):
        if isinstance(data.get("iteration"), int):
            iteration = data["iteration"]
        if isinstance(data.get("config"), str):
            text, source = data["config"], path
    yaml_path = os.path.join(output_dir, "config.yaml")
    if text is None and os.path.isfile(yaml_path):
        with open(yaml_path) as f:
            text, source = f.read(), yaml_path
    return path, iteration, text, source


def nothing_to_train(
    path: str,
    done: int,
    max_iter: int,
    key: str = "SOLVER.MAX_ITER",
    weights_format: str = "MODEL.WEIGHTS {}",
) -> ResumeConfigError:
    """The error for a ``--resume`` whose ``key`` (max_iter) leaves no iteration to train."""
    state = "the run is complete"
    if max_iter < done:
        state = f"{key} = {max_iter} is below it"
    return ResumeConfigError(
        f"--resume: {path} has finished {done} iterations and {state}: nothing to train. To "
        f"train longer, set {key} above {done}; to evaluate that checkpoint, use "
        f"--eval-only --resume (or --eval-only {weights_format.format('<checkpoint>')})."
    )


def check_resume(cfg: Union[CfgNode, RunSettings]) -> List[str]:
    """
    Check that ``--resume`` can continue the run in the config's output directory.

    Args:
        cfg (CfgNode or RunSettings): the current config.

    Returns:
        list[str]: lines to log: every config difference from the run's saved config and what
        happens with it.

    Raises:
        ResumeConfigError: a change that cannot be applied (another optimizer), or a
            max_iter that leaves no iteration to train.
    """
    run = as_run_settings(cfg)
    path, iteration, text, source = read_saved_run(run.output_dir)
    messages: List[str] = []
    if iteration is not None and run.max_iter <= iteration + 1:
        raise nothing_to_train(
            path, iteration + 1, run.max_iter, run.max_iter_key, run.weights_format
        )
    if text is None:
        return [f"--resume from {path}: no saved config found, config changes cannot be listed"]
    diffs = _differences(run.load_saved(text), run.flat_config)
    refused = [(k, old, new) for k, old, new in diffs if k in run.refused]
    if refused:
        lines = [f"  {k}: {old!r} -> {new!r}: {run.refused[k]}" for k, old, new in refused]
        raise ResumeConfigError(
            f"--resume cannot continue the run of {path} with this config:\n"
            + "\n".join(lines)
            + f"\nResume with the run's value ({source}), or start a new run (another "
            f"{run.output_dir_key}, no --resume) from its weights: "
            + run.weights_format.format(path)
            + "."
        )
    if not diffs:
        return []
    messages.append(
        f"--resume from {path}: {len(diffs)} config change(s) from the run's config ({source}):"
    )
    for k, old, new in diffs:
        messages.append(f"  {k}: {old!r} -> {new!r} ({run.not_used.get(k, 'applied')})")
    return messages


def check_optimizer_state(saved: Dict[str, Any], optimizer: torch.optim.Optimizer) -> Optional[str]:
    """
    Why the optimizer state ``saved`` (an ``optimizer.state_dict()``) cannot be loaded into
    ``optimizer``, or None if it can. torch itself loads another optimizer's state (the step
    then fails with ``KeyError: 'momentum'``) and moments of other shapes (a shape error in the
    step).
    """
    groups, current = saved.get("param_groups", []), optimizer.param_groups
    sizes, current_sizes = [len(g["params"]) for g in groups], [len(g["params"]) for g in current]
    if sizes != current_sizes:
        return (
            f"its optimizer has parameter groups of sizes {sizes}, this config's {current_sizes} "
            "(other trainable parameters, e.g. MODEL.BACKBONE.FREEZE_AT or the architecture)"
        )
    keys = sorted({k for g in groups for k in g if k != "params"})
    current_keys = sorted({k for g in current for k in g if k != "params"})
    missing = [k for k in current_keys if k not in keys]
    if missing:
        return (
            f"its optimizer state is another optimizer's (it lacks {missing} that "
            f"{type(optimizer).__name__} needs; SOLVER.OPTIMIZER changed?)"
        )
    params = [p for g in current for p in g["params"]]
    for index, state in saved.get("state", {}).items():
        for name, value in state.items():
            shape = tuple(params[index].shape) if index < len(params) else None
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shape:
                return (
                    f"its optimizer state {name!r} of parameter {index} has shape "
                    f"{tuple(value.shape)}, the parameter {shape} (class counts changed?)"
                )
    return None


def apply_current_hyperparameters(
    optimizer: torch.optim.Optimizer, scheduler: Any, current: List[Dict[str, Any]]
) -> None:
    """
    After a resumed optimizer and LR scheduler were loaded, give them the current config's
    hyper-parameters again: ``current`` holds the optimizer's param groups (without "params")
    as built from the config. The learning rate is recomputed at the scheduler's position.
    """
    for group, values in zip(optimizer.param_groups, current):
        group.update(values)
    if scheduler is None or not hasattr(scheduler, "base_lrs"):
        return
    scheduler.base_lrs = [values.get("initial_lr", values["lr"]) for values in current]
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
        warnings.simplefilter("ignore", UserWarning)
        scheduler.last_epoch -= 1
        scheduler.step()
