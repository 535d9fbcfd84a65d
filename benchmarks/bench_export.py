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

REFERENCE = "detectron2 PanopticFPN (eager)"
TARGET = 0.5
THREADS = 2
DEFAULT_SIZE = (800, 1216)
QUICK_SIZE = (128, 160)


def export_calibrated(workdir: str, size: Tuple[int, int], tiny: bool) -> str:
    """Export ours (PanopticFPNExt, all outputs as detectron2 returns them) with the shared
    calibrated weights; returns the export directory."""
    from panoptic_ext.export import export_model

    weights = os.path.join(workdir, "weights.pth")
    torch.save({"model": calibrated_state_dict(tiny=tiny)}, weights)
    cfg = ours_cfg(tiny=tiny)
    cfg.MODEL.WEIGHTS = weights
    cfg.INPUT.MAX_SIZE_TEST = max(cfg.INPUT.MAX_SIZE_TEST, max(size))
    out = os.path.join(workdir, "onnx")
    export_model(cfg, out, "onnx")
    return out


def load(name: str, export_dir: str, tiny: bool):
    if name == "onnx":
        from panoptic_ext.export import ExportedPanopticModel

        return ExportedPanopticModel(export_dir, ["CPUExecutionProvider"], num_threads=THREADS)
    weights = torch.load(os.path.join(os.path.dirname(export_dir), "weights.pth"))["model"]
    return build_with_weights(reference_cfg(tiny=tiny), weights)


def infer(model, inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    with torch.no_grad():
        return model(inputs)


def pixel_agreement(ours: Sequence[Dict], reference: Sequence[Dict]) -> float:
    """Fraction of pixels whose panoptic segment has the same (isthing, category) on both sides
    (segment ids may be numbered differently)."""
    same = total = 0
    for a, b in zip(ours, reference):
        labels = []
        for seg, info in (a["panoptic_seg"], b["panoptic_seg"]):
            table = torch.full((int(seg.max()) + 1,), -1, dtype=torch.int64)
            for s in info:
                table[s["id"]] = s["category_id"] * 2 + int(s["isthing"])
            labels.append(table[seg.long()])
        same += int((labels[0] == labels[1]).sum())
        total += labels[0].numel()
    return same / total


def _worker(name: str, export_dir: str, height: int, width: int, tiny: bool) -> None:
    torch.set_num_threads(THREADS)
    model = load(name, export_dir, tiny)
    inputs = inference_inputs([(height, width)])
    reset_peak_rss()
    infer(model, inputs)
    emit_worker_result({"peak_mb": peak_rss_mb()})


def run(quick: bool = False, repeats: int = 2, size: Optional[Tuple[int, int]] = None) -> List:
    size = size or (QUICK_SIZE if quick else DEFAULT_SIZE)
    repeats = 1 if quick else repeats
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as workdir:
        export_dir = export_calibrated(workdir, size, quick)
        models = {n: load(n, export_dir, quick) for n in ("onnx", "d2")}
        inputs = inference_inputs([size])
        outputs = {n: infer(m, inputs) for n, m in models.items()}
        agreement = pixel_agreement(outputs["onnx"], outputs["d2"])
        calls = {n: (lambda m=m: infer(m, inputs)) for n, m in models.items()}
        times = time_interleaved(calls, repeats, warmup=0)
        del models
        args = [export_dir, str(size[0]), str(size[1])] + (["--tiny"] if quick else [])
        peaks = {
            n: run_worker("bench_export.py", ["--variant", n, *args])["peak_mb"]
            for n in ("onnx", "d2")
        }
    model_name = "tiny R18" if quick else "R50"
    return [
        make_row(
            "export",
            f"{model_name} ONNX Runtime ({THREADS} threads) + host fusion, "
            f"{size[0]}x{size[1]}, all outputs",
            repeats,
            REFERENCE,
            ours_s=median(times["onnx"]),
            reference_s=median(times["d2"]),
            target=TARGET,
            min_ratio=min_ratio(times, "onnx", "d2"),
            pixel_agreement=agreement,
            segments=len(outputs["onnx"][0]["panoptic_seg"][1]),
            reference_segments=len(outputs["d2"][0]["panoptic_seg"][1]),
            peak_mb=peaks["onnx"],
            reference_peak_mb=peaks["d2"],
        )
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
        export_dir, height, width = args.rest
        _worker(args.variant, export_dir, int(height), int(width), args.tiny)
        return
    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    for row in run(args.quick, args.repeats, size):
        print(row)


if __name__ == "__main__":
    main(sys.argv[1:])
