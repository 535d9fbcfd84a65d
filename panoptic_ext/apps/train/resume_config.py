"""A run's options in either config language (:class:`RunSettings`), and ``--resume`` against the
config of the run it continues.

A resumed run rebuilds its model, data, schedule and hooks from the current config, but restores
the optimizer's hyper-parameters and the LR scheduler's base rates from the checkpoint: detectron2
would silently keep the old ``SOLVER.BASE_LR`` (and weight decay, momentum, ...) while
``config.yaml`` records the new ones. The project's Trainer applies the current values instead
(:meth:`panoptic_ext.apps.train.Trainer.load_state_dict`); here, before anything is written,
:func:`check_resume` lists every difference from the run's saved config (stored in each
checkpoint; ``config.yaml`` for older ones) and refuses the changes a resumed run cannot take.
"""

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import yaml
from detectron2.config import CfgNode

from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer, read_last_checkpoint

__all__ = [
    "ResumeConfigError",
    "RunSettings",
    "apply_current_hyperparameters",
    "check_optimizer_state",
    "check_resume",
    "nothing_to_train",
    "read_saved_run",
]

_MISSING = "<missing>"
# How the run options are written in a YAML config and in a Python config, for messages.
_KEYS = {
    "output_dir": ("OUTPUT_DIR", "train.output_dir"),
    "max_iter": ("SOLVER.MAX_ITER", "train.max_iter"),
    "weights": ("MODEL.WEIGHTS", "train.init_checkpoint"),
    "existing_output": ("RUN.EXISTING_OUTPUT", "train.existing_output"),
    "allow_partial": ("RUN.ALLOW_PARTIAL_WEIGHTS", "train.allow_partial_weights"),
    "download_timeout": ("RUN.WEIGHTS_DOWNLOAD_TIMEOUT", "train.download_timeout"),
    "optimizer": ("SOLVER.OPTIMIZER", "optimizer"),
}
_OTHER_OPTIMIZER = "the checkpoint holds the state of the other optimizer"
_NOT_USED = "not used: --resume loads the checkpoint's weights"


class ResumeConfigError(ValueError):
    """``--resume`` asks for a change that the run cannot take, or for no iteration at all."""


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _load_flat(text: str) -> Dict[str, Any]:
    """A config saved as YAML (config.yaml, or in a checkpoint) as {key: value}: what the current
    config is compared as, through the same YAML (tuples become lists)."""
    return _flatten(yaml.safe_load(text) or {})


@dataclass
class RunSettings:
    """
    The run options of a config in either language (a yacs ``CfgNode``: :meth:`from_cfg`; a
    Python config: :meth:`from_lazy`), as the output-directory checks, ``--resume`` and
    ``--eval-only`` read them; :meth:`key` / :meth:`setting` name them in messages as the
    user's config language writes them.
    """

    language: str  # "yaml" or "python"
    output_dir: str
    max_iter: int
    weights: str  # MODEL.WEIGHTS / train.init_checkpoint
    existing_output: str
    allow_partial: bool
    download_timeout: float
    cpu_speedups: bool
    flat_config: Dict[str, Any]  # key -> value, as the saved config is read back
    refused: Dict[str, str] = field(default_factory=dict)  # changes --resume refuses, why
    not_used: Dict[str, str] = field(default_factory=dict)  # keys --resume does not use

    def key(self, name: str) -> str:
        """The key of run option ``name`` (e.g. "max_iter") in this config language."""
        return _KEYS[name][self.language == "python"]

    def setting(self, name: str, value: Any) -> str:
        """How to set run option ``name`` to ``value`` on the command line."""
        sep = "=" if self.language == "python" else " "
        return f"{self.key(name)}{sep}{value}"

    def checkpointer(self, model: torch.nn.Module, **kwargs: Any) -> PanopticCheckpointer:
        """A :class:`PanopticCheckpointer` of ``model`` in the output directory with this run's
        loading options, its messages in this config language."""
        return PanopticCheckpointer(
            model,
            self.output_dir,
            allow_partial=self.allow_partial,
            download_timeout=self.download_timeout,
            option_names={
                "allow_partial": self.setting("allow_partial", True),
                "download_timeout": self.key("download_timeout"),
            },
            **kwargs,
        )

    @classmethod
    def from_cfg(cls, cfg: CfgNode) -> "RunSettings":
        return cls(
            language="yaml",
            output_dir=cfg.OUTPUT_DIR,
            max_iter=cfg.SOLVER.MAX_ITER,
            weights=cfg.MODEL.WEIGHTS,
            existing_output=cfg.RUN.EXISTING_OUTPUT,
            allow_partial=cfg.RUN.ALLOW_PARTIAL_WEIGHTS,
            download_timeout=cfg.RUN.WEIGHTS_DOWNLOAD_TIMEOUT,
            cpu_speedups=cfg.TEST.CPU_SPEEDUPS,
            flat_config=_load_flat(cfg.dump()),
            refused={"SOLVER.OPTIMIZER": _OTHER_OPTIMIZER},
            not_used={"MODEL.WEIGHTS": _NOT_USED},
        )

    @classmethod
    def from_lazy(cls, cfg: Any) -> "RunSettings":
        """The settings of a Python config (``cfg.train`` holds the run options)."""
        from panoptic_ext.apps.train.lazy_config import lazy_config_text

        train = cfg.train
        return cls(
            language="python",
            output_dir=train.output_dir,
            max_iter=train.max_iter,
            weights=train.init_checkpoint,
            existing_output=train.existing_output,
            allow_partial=train.allow_partial_weights,
            download_timeout=train.download_timeout,
            cpu_speedups=train.cpu_speedups,
            flat_config=_load_flat(lazy_config_text(cfg)),
            refused={"optimizer.name": _OTHER_OPTIMIZER, "optimizer._target_": _OTHER_OPTIMIZER},
            not_used={"train.init_checkpoint": _NOT_USED},
        )


def _differences(a: Dict[str, Any], b: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
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
    path = read_last_checkpoint(output_dir)
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


def nothing_to_train(path: str, done: int, run: RunSettings) -> ResumeConfigError:
    """The error for a ``--resume`` whose max_iter leaves no iteration to train."""
    key = run.key("max_iter")
    state = "the run is complete"
    if run.max_iter < done:
        state = f"{key} = {run.max_iter} is below it"
    return ResumeConfigError(
        f"--resume: {path} has finished {done} iterations and {state}: nothing to train. To "
        f"train longer, set {key} above {done}; to evaluate that checkpoint, use "
        f"--eval-only --resume (or --eval-only {run.setting('weights', '<checkpoint>')})."
    )


def check_resume(run: RunSettings) -> List[str]:
    """
    Check that ``--resume`` can continue the run in the config's output directory.

    Returns:
        list[str]: lines to log: every config difference from the run's saved config and what
        happens with it.

    Raises:
        ResumeConfigError: a change that cannot be applied (another optimizer), or a
            max_iter that leaves no iteration to train.
    """
    path, iteration, text, source = read_saved_run(run.output_dir)
    if iteration is not None and run.max_iter <= iteration + 1:
        raise nothing_to_train(path, iteration + 1, run)
    if text is None:
        return [f"--resume from {path}: no saved config found, config changes cannot be listed"]
    diffs = _differences(_load_flat(text), run.flat_config)
    refused = [(k, old, new) for k, old, new in diffs if k in run.refused]
    if refused:
        lines = [f"  {k}: {old!r} -> {new!r}: {run.refused[k]}" for k, old, new in refused]
        raise ResumeConfigError(
            f"--resume cannot continue the run of {path} with this config:\n"
            + "\n".join(lines)
            + f"\nResume with the run's value ({source}), or start a new run (another "
            f"{run.key('output_dir')}, no --resume) from its weights: "
            f"{run.setting('weights', path)}."
        )
    if not diffs:
        return []
    messages = [
        f"--resume from {path}: {len(diffs)} config change(s) from the run's config ({source}):"
    ]
    for k, old, new in diffs:
        messages.append(f"  {k}: {old!r} -> {new!r} ({run.not_used.get(k, 'applied')})")
    return messages


def check_optimizer_state(
    saved: Dict[str, Any], optimizer: torch.optim.Optimizer, optimizer_key: str = "SOLVER.OPTIMIZER"
) -> Optional[str]:
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
            "(other trainable parameters: a frozen backbone stage or the architecture changed?)"
        )
    keys = sorted({k for g in groups for k in g if k != "params"})
    current_keys = sorted({k for g in current for k in g if k != "params"})
    missing = [k for k in current_keys if k not in keys]
    if missing:
        return (
            f"its optimizer state is another optimizer's (it lacks {missing} that "
            f"{type(optimizer).__name__} needs; {optimizer_key} changed?)"
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
