"""
Deployment: the R50 Panoptic FPN exported to ONNX and run on ONNX Runtime (2 threads) with the
project's host-side fusion, vs detectron2's eager PanopticFPN with the same weights on the same
image; pixel agreement of the panoptic outputs in the same row; peak memory of each in its own
process. The steps that brought ONNX Runtime where it is (frozen BN folded at export, session
options) are rows of the same side-by-side run. Each export's row gives the multiply-adds it
executes (ONNX Runtime's profiler), its GFLOP/s and share of the machine's limit; the panoptic
row adds where ONNX Runtime's time goes (per-operator shares, multiply-adds and GFLOP/s), the
best GFLOP/s of one large convolution on the same threads (MLAS through ONNX Runtime, oneDNN
through torch) and whether the target ratio is reachable at those rates (``target_bound``).

    python benchmarks/bench_export.py [--quick] [--size 800x1216] [--repeats 2] [--int8]
    python benchmarks/bench_export.py --no-profile   # without the profile and the bound
"""

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from common import (
    build_with_weights,
    calibrated_state_dict,
    emit_worker_result,
    inference_inputs,
    machine_limit,
    make_row,
    median,
    min_ratio,
    ours_cfg,
    peak_rss_mb,
    reference_cfg,
    reset_peak_rss,
    run_worker,
    throughput,
    time_interleaved,
)

from panoptic_ext.apps.export.faithfulness import panoptic_agreement

REFERENCE = "detectron2 PanopticFPN (eager)"
TARGET = 0.4
THREADS = 2
DEFAULT_SIZE = (800, 1216)
QUICK_SIZE = (128, 160)


# Exports of ours with the shared weights: name -> (POSTPROCESS.RETURN_* values, fold frozen BN).
# "onnx" returns every output detectron2 returns (sem_seg logits, instances with all masks,
# panoptic_seg); "onnx_panoptic" only panoptic_seg (its graph predicts masks only for the
# detections the fusion visits, as PanopticROIHeads in eager).
EXPORTS = {
    "onnx": ({"RETURN_SEM_SEG": True, "RETURN_INSTANCES": True}, True),
    "onnx_panoptic": ({"RETURN_SEM_SEG": False, "RETURN_INSTANCES": False}, True),
    "onnx_panoptic_unfolded": ({"RETURN_SEM_SEG": False, "RETURN_INSTANCES": False}, False),
}
# What is timed: name -> (export, ONNX Runtime session config entries, row label). The steps are
# cumulative: each row adds one change to the one above it.
NO_SPIN = {"session.intra_op.allow_spinning": "0"}
VARIANTS = {
    "onnx": ("onnx", {}, "all outputs"),
    "onnx_panoptic": ("onnx_panoptic", {}, "panoptic output"),
    "step0": (
        "onnx_panoptic_unfolded",
        {},
        "panoptic output, step 0: the export as before (frozen BN as Mul + Add)",
    ),
    "step1": ("onnx_panoptic", {}, "panoptic output, step 1: + frozen BN folded at export"),
    "step2": ("onnx_panoptic", NO_SPIN, "panoptic output, step 2: + no spin-waiting threads"),
    "step3": (
        "onnx_panoptic",
        {**NO_SPIN, "session.set_denormal_as_zero": "1"},
        "panoptic output, step 3: + denormals as zero",
    ),
}
# The variants whose peak memory is measured (each in its own process; and the int8 export).
PEAK_VARIANTS = ("onnx", "onnx_panoptic")


# Opt-in reduced precision (--int8): the panoptic export with int8 convolutions (static
# quantization calibrated on two synthetic images other than the timed one).
INT8 = ("onnx_panoptic_int8", NO_SPIN, "panoptic output, int8 convolutions (opt-in, not exact)")


def export_int8(workdir: str, size: Tuple[int, int]) -> None:
    from panoptic_ext.apps.export.quantize import quantize_export

    images = [x["image"].float().numpy() for x in inference_inputs([size, size], seed=100)]
    quantize_export(os.path.join(workdir, "onnx_panoptic"), os.path.join(workdir, INT8[0]), images)


def export_calibrated(workdir: str, size: Tuple[int, int], tiny: bool) -> None:
    """Export ours with the shared calibrated weights to ``workdir/<name>`` (see EXPORTS)."""
    from panoptic_ext.apps.export import export_model

    weights = os.path.join(workdir, "weights.pth")
    torch.save({"model": calibrated_state_dict(tiny=tiny)}, weights)
    for name, (postprocess, fold) in EXPORTS.items():
        cfg = ours_cfg(tiny=tiny, **postprocess)
        cfg.MODEL.WEIGHTS = weights
        cfg.INPUT.MAX_SIZE_TEST = max(cfg.INPUT.MAX_SIZE_TEST, max(size))
        export_model(cfg, os.path.join(workdir, name), "onnx", fold_batchnorm=fold)


def load(name: str, workdir: str, tiny: bool):
    variant = VARIANTS.get(name) or (INT8 if name == "int8" else None)
    if variant:
        from panoptic_ext.apps.export import ExportedPanopticModel

        export, config, _ = variant
        return ExportedPanopticModel(
            os.path.join(workdir, export),
            ["CPUExecutionProvider"],
            num_threads=THREADS,
            session_config=config,
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


def _macs(op: str, inputs: List[List[int]], outputs: List[List[int]]) -> int:
    """Multiply-adds of one operator run from its shapes (ONNX Runtime's profiler records the
    logical NCHW shapes, also for its blocked NCHWc kernels); 0 for other operators."""
    numel = lambda shape: int(np.prod(shape)) if shape else 0  # noqa: E731
    if op in ("Conv", "FusedConv") and len(inputs) > 1:
        return numel(outputs[0]) * numel(inputs[1][1:])
    if op == "ConvTranspose":
        return numel(inputs[0]) * numel(inputs[1][1:])
    if op in ("Gemm", "FusedGemm", "MatMul", "FusedMatMul") and outputs:
        return numel(inputs[0]) * outputs[0][-1]
    return 0


def ort_profile(model_dir: str, image: np.ndarray, config: Dict[str, str]) -> Dict[str, Any]:
    """
    One run of the export's network under ONNX Runtime's profiler (after an unprofiled one):
    per operator type its share of the kernel time, its multiply-adds and GFLOP/s (2 flops per
    multiply-add).
    """
    import onnxruntime as ort

    from panoptic_ext.apps.export.runtime import onnx_session_options

    with tempfile.TemporaryDirectory() as tmp:
        options = onnx_session_options(THREADS, config)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(
            os.path.join(model_dir, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        for _ in range(2):
            session.run(None, {"image": image})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    start, end = runs[-1]["ts"], runs[-1]["ts"] + runs[-1]["dur"]
    ops: Dict[str, Dict[str, float]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if not start <= e["ts"] <= end:
            continue
        args = e["args"]
        shapes = [
            [list(d.values())[0] for d in args.get(k, [])]
            for k in ("input_type_shape", "output_type_shape")
        ]
        entry = ops.setdefault(args["op_name"], {"s": 0.0, "macs": 0})
        entry["s"] += e["dur"] / 1e6
        entry["macs"] += _macs(args["op_name"], *shapes)
    kernel_s = sum(v["s"] for v in ops.values())
    table = {
        op: {
            "share": round(v["s"] / kernel_s, 4),
            "s": round(v["s"], 3),
            "gmacs": round(v["macs"] / 1e9, 2),
            "gflops_per_s": round(2 * v["macs"] / 1e9 / v["s"], 1) if v["macs"] else None,
        }
        for op, v in sorted(ops.items(), key=lambda kv: -kv[1]["s"])
    }
    macs = sum(v["macs"] for v in ops.values())
    return {
        "run_s": runs[-1]["dur"] / 1e6,
        "kernel_s": kernel_s,
        "gmacs": macs / 1e9,
        "gflops_per_s": 2 * macs / 1e9 / (runs[-1]["dur"] / 1e6),
        "ops": dict(list(table.items())[:12]),
    }


def target_bound(profile: Dict[str, Any], reference_s: float, limit: float) -> Dict[str, float]:
    """
    Whether the target ratio is reachable on this machine, from the panoptic export's profile:
    the GFLOP/s the whole graph would have to sustain, the ratio if every multiply-add ran at
    the best measured rate (``limit``), and the ratio of the convolutions alone as they run now
    (every other operator and the host-side fusion taking no time).
    """
    conv_s = sum(v["s"] for op, v in profile["ops"].items() if op in ("Conv", "FusedConv"))
    return {
        "needed_gflops_per_s": round(2 * profile["gmacs"] / (TARGET * reference_s), 1),
        "best_gflops_per_s": round(limit, 1),
        "ratio_at_best_rate": round(2 * profile["gmacs"] / limit / reference_s, 3),
        "ratio_of_convolutions_alone": round(conv_s / reference_s, 3),
    }


def conv_limit(repeats: int = 3) -> Dict[str, float]:
    """
    GFLOP/s of one large 3x3 convolution (256 -> 256 channels at 200x304: the FPN's and RPN's
    stride-4 convolutions, a third of the model's multiply-adds) on THREADS threads, best of
    ``repeats``: through ONNX Runtime (MLAS, the kernels of the exported model) and torch
    (oneDNN, the eager models').
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from panoptic_ext.apps.export.runtime import onnx_session_options

    c, h, w = 256, 200, 304
    macs = c * c * 9 * h * w
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, h, w), dtype=np.float32)
    weight = rng.standard_normal((c, c, 3, 3), dtype=np.float32) * 0.02
    bias = np.zeros(c, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(
        model.SerializeToString(),
        onnx_session_options(THREADS, NO_SPIN),
        providers=["CPUExecutionProvider"],
    )
    conv = torch.nn.Conv2d(c, c, 3, padding=1).eval()
    xt = torch.from_numpy(x)
    calls = {
        "mlas": lambda: session.run(None, {"x": x}),
        "onednn": lambda: conv(xt),
    }
    with torch.no_grad():
        times = time_interleaved(calls, repeats, warmup=1)
    return {k: round(2 * macs / 1e9 / min(v), 1) for k, v in times.items()}


def run(
    quick: bool = False,
    repeats: int = 2,
    size: Optional[Tuple[int, int]] = None,
    profile: bool = True,
    int8: bool = False,
) -> List:
    if int8:
        from panoptic_ext.apps.export.quantize import check_cpu_support

        check_cpu_support("int8")
        VARIANTS["int8"] = INT8
    size = size or (QUICK_SIZE if quick else DEFAULT_SIZE)
    repeats = 1 if quick else repeats
    torch.set_num_threads(THREADS)
    # variants with the same export and session config are timed once
    keys = {n: (e, tuple(sorted(c.items()))) for n, (e, c, _) in VARIANTS.items()}
    timed = {k: n for n, k in reversed(list(keys.items()))}
    names = list(timed.values()) + ["d2"]
    with tempfile.TemporaryDirectory() as workdir:
        export_calibrated(workdir, size, quick)
        if int8:
            export_int8(workdir, size)
        models = {n: load(n, workdir, quick) for n in names}
        inputs = inference_inputs([size])
        outputs = {n: infer(m, inputs)[0] for n, m in models.items()}
        calls = {n: (lambda m=m: infer(m, inputs)) for n, m in models.items()}
        times = time_interleaved(calls, repeats, warmup=0)
        del models
        args = [workdir, str(size[0]), str(size[1])] + (["--tiny"] if quick else [])
        peaks = {
            n: run_worker("bench_export.py", ["--variant", n, *args])["peak_mb"]
            for n in PEAK_VARIANTS + (("int8",) if int8 else ()) + ("d2",)
        }
        # the multiply-adds each export executes on the image (ONNX Runtime's profiler)
        image = inputs[0]["image"].float().numpy()
        profiles = {
            n: ort_profile(os.path.join(workdir, VARIANTS[n][0]), image, VARIANTS[n][1])
            for n in PEAK_VARIANTS
        }
        extra = {}
        if profile:
            extra["profile"] = profiles["onnx_panoptic"]
            extra["conv_limit_gflops_per_s"] = conv_limit()
    # the limit: the best FP32 probe of this run (the conv probes beside the timings included)
    limit = machine_limit(quick)["fp32_gflops"]
    if profile:
        limit = max(limit, *extra["conv_limit_gflops_per_s"].values())
        extra["target_bound"] = target_bound(extra["profile"], median(times["d2"]), limit)
    for name, key in keys.items():
        times[name], outputs[name] = times[timed[key]], outputs[timed[key]]
    model_name = "tiny R18" if quick else "R50"
    rows = []
    for name, (_, _, label) in VARIANTS.items():
        memory = {}
        if name in peaks:
            memory = {"ours_peak_rss_mb": peaks[name], "reference_peak_rss_mb": peaks["d2"]}
        if name in profiles:
            rate = throughput(profiles[name]["gmacs"] * 1e9, median(times[name]), limit)
            memory.update(
                gmacs=round(profiles[name]["gmacs"], 1),
                ours_gflops_per_s=round(rate["gflops_per_s"], 1),
                ours_share_of_limit=round(rate["share_of_limit"], 4),
                limit_gflops_per_s=round(limit, 1),
            )
        rows.append(
            make_row(
                "export",
                f"{model_name} ONNX Runtime ({THREADS} threads) + host fusion, "
                f"{size[0]}x{size[1]}, {label}",
                repeats,
                REFERENCE,
                ours_s=median(times[name]),
                reference_s=median(times["d2"]),
                target=TARGET if name in PEAK_VARIANTS else None,
                min_ratio=min_ratio(times, name, "d2"),
                pixel_agreement=panoptic_agreement(outputs[name], outputs["d2"]),
                segments=len(outputs[name]["panoptic_seg"][1]),
                reference_segments=len(outputs["d2"]["panoptic_seg"][1]),
                **memory,
                **(extra if name == "onnx_panoptic" else {}),
            )
        )
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", default=None, help="HxW")
    parser.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="leave out ONNX Runtime's per-operator table, the conv limit and the target bound",
    )
    parser.add_argument("--int8", action="store_true", help="add the opt-in int8 export's row")
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
    for row in run(args.quick, args.repeats, size, args.profile, args.int8):
        print(row)


if __name__ == "__main__":
    main(sys.argv[1:])
