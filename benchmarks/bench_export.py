"""
Deployment: the R50 Panoptic FPN exported to ONNX and run on ONNX Runtime (2 threads) with the
project's host-side fusion, vs detectron2's eager PanopticFPN with the same weights on the same
image; pixel agreement of the panoptic outputs in the same row; peak memory of each in its own
process.

    python benchmarks/bench_export.py [--quick] [--size 800x1216] [--repeats 2]
"""

import argparse
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from common import (
    build_with_weights,
    calibrated_state_dict,
    emit_worker_result,
    inference_inputs,
    make_row,
    median,
    min_ratio,
    ours_cfg,
    peak_rss_mb,
    reference_cfg,
    reset_peak_rss,
    run_worker,
    time_interleaved,
)

from panoptic_ext.apps.export.faithfulness import panoptic_agreement

REFERENCE = "detectron2 PanopticFPN (eager)"
TARGET = 0.5
THREADS = 2
DEFAULT_SIZE = (800, 1216)
QUICK_SIZE = (128, 160)


# Exports of ours with the shared weights: name -> (POSTPROCESS.RETURN_* values, row label).
# "onnx" returns every output detectron2 returns (sem_seg logits, instances with all masks,
# panoptic_seg); "onnx_panoptic" only panoptic_seg (its graph predicts masks only for the
# detections the fusion visits, as PanopticROIHeads in eager).
VARIANTS = {
    "onnx": ({"RETURN_SEM_SEG": True, "RETURN_INSTANCES": True}, "all outputs"),
    "onnx_panoptic": ({"RETURN_SEM_SEG": False, "RETURN_INSTANCES": False}, "panoptic output"),
}


def export_calibrated(workdir: str, size: Tuple[int, int], tiny: bool) -> None:
    """Export each variant of ours with the shared calibrated weights to ``workdir/<name>``."""
    from panoptic_ext.apps.export import export_model

    weights = os.path.join(workdir, "weights.pth")
    torch.save({"model": calibrated_state_dict(tiny=tiny)}, weights)
    for name, (postprocess, _) in VARIANTS.items():
        cfg = ours_cfg(tiny=tiny, **postprocess)
        cfg.MODEL.WEIGHTS = weights
        cfg.INPUT.MAX_SIZE_TEST = max(cfg.INPUT.MAX_SIZE_TEST, max(size))
        export_model(cfg, os.path.join(workdir, name), "onnx")


def load(name: str, workdir: str, tiny: bool):
    if name in VARIANTS:
        from panoptic_ext.apps.export import ExportedPanopticModel

        return ExportedPanopticModel(
            os.path.join(workdir, name), ["CPUExecutionProvider"], num_threads=THREADS
        )
    weights = torch.load(os.path.join(workdir, "weights.pth"))["model"]
    return build_with_weights(reference_cfg(tiny=tiny), weights)


def infer(model, inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    with torch.no_grad():
        return model(inputs)


def _worker(name: str, workdir: str, height: int, width: int, tiny: bool) -> None:
    torch.set_num_threads(THREADS)
    model = load(name, workdir, tiny)
    inputs = inference_inputs([(height, width)])
    reset_peak_rss()
    infer(model, inputs)
    emit_worker_result({"peak_mb": peak_rss_mb()})


def run(quick: bool = False, repeats: int = 2, size: Optional[Tuple[int, int]] = None) -> List:
    size = size or (QUICK_SIZE if quick else DEFAULT_SIZE)
    repeats = 1 if quick else repeats
    torch.set_num_threads(THREADS)
    names = list(VARIANTS) + ["d2"]
    with tempfile.TemporaryDirectory() as workdir:
        export_calibrated(workdir, size, quick)
        models = {n: load(n, workdir, quick) for n in names}
        inputs = inference_inputs([size])
        outputs = {n: infer(m, inputs)[0] for n, m in models.items()}
        calls = {n: (lambda m=m: infer(m, inputs)) for n, m in models.items()}
        times = time_interleaved(calls, repeats, warmup=0)
        del models
        args = [workdir, str(size[0]), str(size[1])] + (["--tiny"] if quick else [])
        peaks = {
            n: run_worker("bench_export.py", ["--variant", n, *args])["peak_mb"] for n in names
        }
    model_name = "tiny R18" if quick else "R50"
    return [
        make_row(
            "export",
            f"{model_name} ONNX Runtime ({THREADS} threads) + host fusion, "
            f"{size[0]}x{size[1]}, {label}",
            repeats,
            REFERENCE,
            ours_s=median(times[name]),
            reference_s=median(times["d2"]),
            target=TARGET,
            min_ratio=min_ratio(times, name, "d2"),
            pixel_agreement=panoptic_agreement(outputs[name], outputs["d2"]),
            segments=len(outputs[name]["panoptic_seg"][1]),
            reference_segments=len(outputs["d2"]["panoptic_seg"][1]),
            ours_peak_rss_mb=peaks[name],
            reference_peak_rss_mb=peaks["d2"],
        )
        for name, (_, label) in VARIANTS.items()
    ]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", default=None, help="HxW")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        workdir, height, width = args.rest
        _worker(args.variant, workdir, int(height), int(width), args.tiny)
        return
    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    for row in run(args.quick, args.repeats, size):
        print(row)


if __name__ == "__main__":
    main(sys.argv[1:])
