"""``--resume`` against the config of the run it continues.

A resumed run rebuilds its model, data, schedule and hooks from the current config, but restores
the optimizer's hyper-parameters and the LR scheduler's base rates from the checkpoint: detectron2
would silently keep the old ``SOLVER.BASE_LR`` (and weight decay, momentum, ...) while
``config.yaml`` records the new ones. The project's Trainer applies the current values instead
(:meth:`panoptic_ext.engine.Trainer.load_state_dict`); here, before anything is written,
:func:`check_resume` lists every difference from the run's saved config (stored in each
checkpoint; ``config.yaml`` for older ones) and refuses the changes a resumed run cannot take.
"""

import logging
import os
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode

__all__ = [
    "ResumeConfigError",
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
    "MODEL.PANOPTIC_EXT.SOLVER.OPTIMIZER": "the checkpoint holds the state of the other optimizer",
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


def config_differences(saved: CfgNode, current: CfgNode) -> List[Tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` of every key that differs, sorted by key; a key
    missing on one side has the value ``"<missing>"``."""
    a, b = _normalised(saved), _normalised(current)
    return [
        (k, a.get(k, _MISSING), b.get(k, _MISSING))
        for k in sorted(set(a) | set(b))
        if a.get(k, _MISSING) != b.get(k, _MISSING)
    ]


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


def nothing_to_train(path: str, done: int, max_iter: int) -> ResumeConfigError:
    """The error for a ``--resume`` whose SOLVER.MAX_ITER leaves no iteration to train."""
    state = "the run is complete"
    if max_iter < done:
        state = f"SOLVER.MAX_ITER = {max_iter} is below it"
    return ResumeConfigError(
        f"--resume: {path} has finished {done} iterations and {state}: nothing to train. To "
        f"train longer, set SOLVER.MAX_ITER above {done}; to evaluate that checkpoint, use "
        "--eval-only --resume (or --eval-only MODEL.WEIGHTS <checkpoint>)."
    )


def check_resume(cfg: CfgNode) -> List[str]:
    """
    Check that ``--resume`` can continue the run in ``cfg.OUTPUT_DIR`` with ``cfg``.

    Returns:
        list[str]: lines to log: every config difference from the run's saved config and what
        happens with it.

    Raises:
        ResumeConfigError: a change that cannot be applied (another optimizer), or a
            SOLVER.MAX_ITER that leaves no iteration to train.
    """
    path, iteration, text, source = read_saved_run(cfg.OUTPUT_DIR)
    messages: List[str] = []
    if iteration is not None and cfg.SOLVER.MAX_ITER <= iteration + 1:
        raise nothing_to_train(path, iteration + 1, cfg.SOLVER.MAX_ITER)
    if text is None:
        return [f"--resume from {path}: no saved config found, config changes cannot be listed"]
    diffs = config_differences(CfgNode.load_cfg(text), cfg)
    refused = [(k, old, new) for k, old, new in diffs if k in _REFUSED]
    if refused:
        lines = [f"  {k}: {old!r} -> {new!r}: {_REFUSED[k]}" for k, old, new in refused]
        raise ResumeConfigError(
            f"--resume cannot continue the run of {path} with this config:\n"
            + "\n".join(lines)
            + f"\nResume with the run's value ({source}), or start a new run (another OUTPUT_DIR,"
            f" no --resume) from its weights: MODEL.WEIGHTS {path}."
        )
    if not diffs:
        return []
    messages.append(
        f"--resume from {path}: {len(diffs)} config change(s) from the run's config ({source}):"
    )
    for k, old, new in diffs:
        messages.append(f"  {k}: {old!r} -> {new!r} ({_NOT_USED.get(k, 'applied')})")
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
            f"{type(optimizer).__name__} needs; MODEL.PANOPTIC_EXT.SOLVER.OPTIMIZER changed?)"
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
