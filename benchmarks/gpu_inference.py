"""
Timed inference on a GPU (run by tools/gpu_check.sh): panoptic_ext's PanopticFPNExt against
detectron2's PanopticFPN, R50 model-zoo config with the same calibrated random weights, one
800x1216 image, warm-up runs, then timed runs alternating between the two models. Prints
ms/image for each (float32, and under float16 autocast) and whether the panoptic outputs are
equal; exits with status 1 if they differ.

    python benchmarks/gpu_inference.py [--device cuda] [--size 800x1216] [--warmup 3] [--runs 10]
"""

import argparse
import sys
from typing import Callable, Dict, List

import torch
from bench_inference import VARIANTS, infer, outputs_identical
from common import (
    build_with_weights,
    calibrated_state_dict,
    inference_inputs,
    median,
    ours_cfg,
    reference_cfg,
    time_interleaved,
)

DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="800x1216", help="HxW of the image")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--dtypes", default="float32,float16", help=f"of {sorted(DTYPES)}")
    return parser.parse_args(argv)


def timed_call(model, inputs, keys, device: str, dtype) -> Callable[[], List]:
    """One inference that reads ``keys`` of every output, finished on the device when it returns."""
    autocast_dtype = dtype or torch.float32

    def call():
        with torch.autocast(device, dtype=autocast_dtype, enabled=dtype is not None):
            outputs = infer(model, inputs, keys)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return outputs

    return call


def main(argv=None) -> int:
    args = parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))
    models: Dict[str, torch.nn.Module] = {}
    state_dict = calibrated_state_dict()
    for name, cfg in (("d2", reference_cfg()), ("ours", ours_cfg())):
        cfg.MODEL.DEVICE = args.device
        models[name] = build_with_weights(cfg, state_dict)
    inputs = inference_inputs([(height, width)])
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(args.device)}")
    print(f"image {height}x{width}, {args.warmup} warm-up and {args.runs} timed runs per model")

    all_equal = True
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        calls = {
            name: timed_call(models[name], inputs, VARIANTS[name][1], args.device, dtype)
            for name in ("d2", "ours")
        }
        times = time_interleaved(calls, repeats=args.runs, warmup=args.warmup)
        ms = {name: 1000 * median(t) for name, t in times.items()}
        diffs = outputs_identical(calls["ours"](), calls["d2"]())
        panoptic_diff = diffs["panoptic_seg"]
        all_equal &= panoptic_diff is None
        other = {k: v for k, v in diffs.items() if k != "panoptic_seg" and v is not None}
        print(
            f"{dtype_name:>8}: detectron2 PanopticFPN {ms['d2']:.1f} ms/image, "
            f"panoptic_ext {ms['ours']:.1f} ms/image (ratio {ms['ours'] / ms['d2']:.2f}); "
            f"panoptic outputs {'EQUAL' if panoptic_diff is None else 'DIFFER: ' + panoptic_diff}"
            + (f"; other outputs differ: {other}" if other else "")
        )
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
