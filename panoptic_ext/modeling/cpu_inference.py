"""
``optimize_for_cpu_inference(model)``: the one explicit pass that applies the project's CPU-only
inference speed-ups to a built model. ``build_model(cfg)`` never applies them; the project's
predictor and evaluation do, only for a CPU model in eval mode.

Each speed-up replaces a child module (a norm or activation inside detectron2's ``Conv2d``; a
ROI pooler's level poolers) by one with the same parameters, buffers and state dict that
computes the same values (bit for bit) faster on the CPU, and runs the original module's code
whenever its fast path does not apply: with autograd involved, under autocast, while tracing or
scripting, or on a non-CPU tensor (:func:`cpu_fast_path_applies`). What each one saves at
800x1216 (R50-FPN, 2 threads) is measured by ``benchmarks/bench_inference.py --speedups`` and
listed in docs/performance.md.
"""

import contextlib
import logging
from typing import ContextManager, Dict, FrozenSet, Optional

import torch
from torch import nn

from ..compat import autocast_enabled

__all__ = [
    "CPU_SPEEDUPS",
    "bf16_autocast",
    "cpu_fast_path_applies",
    "cpu_flags",
    "cpu_supports_bf16",
    "optimize_for_cpu_inference",
]

logger = logging.getLogger(__name__)

# The speed-ups, in the order they are applied (see each function's docstring).
CPU_SPEEDUPS = ("inplace_conv_layers", "parallel_roi_align")


def cpu_fast_path_applies(x: torch.Tensor) -> bool:
    """Whether a CPU speed-up may run on ``x``: a CPU tensor outside autograd (no grad needed),
    autocast, tracing and scripting."""
    return (
        x.device.type == "cpu"
        and not (torch.is_grad_enabled() and x.requires_grad)
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not autocast_enabled("cpu")
    )


def optimize_for_cpu_inference(model: nn.Module, speedups=CPU_SPEEDUPS) -> Dict[str, int]:
    """
    Apply the CPU inference speed-ups to ``model``, in place. The outputs do not change.

    Args:
        model (nn.Module): a model in eval mode whose parameters are on the CPU.
        speedups (list[str]): which of :data:`CPU_SPEEDUPS` to apply.

    Returns:
        dict[str, int]: per speed-up, how many modules it changed (0 when already applied).

    Raises:
        ValueError: the model is in training mode, not on the CPU, or a speed-up is unknown.
    """
    from .inplace_layers import use_inplace_conv_layers
    from .parallel_pooler import parallelize_roi_poolers

    unknown = sorted(set(speedups) - set(CPU_SPEEDUPS))
    if unknown:
        raise ValueError(f"unknown CPU speed-ups {unknown}; known: {list(CPU_SPEEDUPS)}")
    if model.training:
        raise ValueError("optimize_for_cpu_inference needs a model in eval mode (model.eval())")
    devices = {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}
    if devices - {"cpu"}:
        raise ValueError(
            f"optimize_for_cpu_inference applies to CPU models only; this one is on {devices}"
        )
    apply = {
        "inplace_conv_layers": use_inplace_conv_layers,
        "parallel_roi_align": parallelize_roi_poolers,
    }
    changed = {name: apply[name](model) for name in CPU_SPEEDUPS if name in speedups}
    logger.info("CPU inference speed-ups applied: %s", changed)
    return changed


# CPU features that give bf16 dot products in hardware (oneDNN uses them); without them bf16 is
# emulated in FP32 and slower than FP32 itself.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags (``flags``, or ``Features`` on ARM, of ``/proc/cpuinfo``; empty
    where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_bf16(flags: Optional[FrozenSet[str]] = None) -> bool:
    """Whether the CPU (or the given ``flags``) has bf16 dot products (AVX-512 BF16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_CPU_FLAGS)


def bf16_autocast(enabled: bool = True, flags: Optional[FrozenSet[str]] = None) -> ContextManager:
    """
    The reduced-precision CPU inference path, opt-in (``TEST.CPU_BF16``; never the default):
    ``torch.autocast("cpu", dtype=torch.bfloat16)`` around a model's inference. Convolutions and
    matrix multiplies run in bf16 (the outputs differ from FP32's; the CPU speed-ups of
    :func:`optimize_for_cpu_inference` and the fast post-processing step aside under autocast).

    Args:
        enabled (bool): False gives a context that changes nothing (FP32).
        flags (frozenset): the CPU flags to check (default: this machine's, :func:`cpu_flags`).

    Raises:
        RuntimeError: enabled on a CPU without bf16 dot products (avx512_bf16 / amx_bf16), where
            bf16 would be emulated and slower than FP32.
    """
    if not enabled:
        return contextlib.nullcontext()
    if not cpu_supports_bf16(flags):
        raise RuntimeError(
            "TEST.CPU_BF16 asks for bf16 CPU inference, but this CPU has none of the flags "
            f"{list(BF16_CPU_FLAGS)} in /proc/cpuinfo (bf16 would be emulated, slower than FP32): "
            "set TEST.CPU_BF16 False"
        )
    return torch.autocast("cpu", dtype=torch.bfloat16)
