"""
Scaling: how panoptic post-processing and end-to-end inference time grow with the image size and
the number of detections, ours vs detectron2, side by side; a table and a plot (PNG).

    python benchmarks/bench_scaling.py [--quick] [--plot benchmarks/scaling.png]

Inference: detectron2's PanopticFPN vs ours returning the panoptic output only, set up as README
recommends for the CPU (``optimize_for_cpu_inference``).

Post-processing is timed on the real raw outputs of the R50 model (calibrated random weights) at
each size, with the detections cut to the 10 / 50 / 100 best: detectron2's
``sem_seg_postprocess`` + ``detector_postprocess`` + ``combine_semantic_and_instance_outputs``
(panoptic_ext's "detectron2" post-processor, which calls exactly these) vs panoptic_ext's
"fast" one, configured to return the panoptic output only, and every output.
"""

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from bench_inference import build_models, infer
from common import (
    BENCH_DIR,
    REPO_ROOT,
    calibrated_state_dict,
    inference_inputs,
    make_row,
    median,
    min_ratio,
    ours_cfg,
    panoptic_outputs_equal,
    time_interleaved,
)

SIZES = ((400, 608), (800, 1216), (1024, 2048))
DETECTIONS = (10, 50, 100)
QUICK_SIZES = ((96, 128), (128, 160))
QUICK_DETECTIONS = (10, 50)
INFERENCE_BASE_SIZE = (800, 1216)  # where the number of detections varies for inference
EVERYTHING = ("sem_seg", "instances", "panoptic_seg")  # what detectron2's PanopticFPN returns


class _Recorder:
    """Wraps a post-processor and, while ``recording``, keeps the arguments of its calls."""

    def __init__(self, inner: Callable):
        self.inner = inner
        self.recording = False
        self.calls: List[Tuple[torch.Tensor, Any, Dict[str, Any]]] = []

    def __call__(self, logits, instances, **kwargs):
        if self.recording:
            self.calls.append((logits, instances, kwargs))
        return self.inner(logits, instances, **kwargs)

    def call_inputs(self, i: int) -> Tuple[torch.Tensor, Any, Dict[str, Any]]:
        """The i-th recorded (logits, instances, kwargs)."""
        return self.calls[i]


def _postprocessors(tiny: bool) -> Dict[str, Callable]:
    from panoptic_ext.modeling import Detectron2PanopticPostprocessor, FastPanopticPostprocessor

    cfg = ours_cfg(tiny=tiny)
    panoptic_only = ours_cfg(tiny=tiny, RETURN_SEM_SEG=False, RETURN_INSTANCES=False)
    return {
        "d2": Detectron2PanopticPostprocessor(cfg),
        "ours": FastPanopticPostprocessor(cfg),
        "ours_panoptic": FastPanopticPostprocessor(panoptic_only),
    }


def _read(outputs: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        outputs[key]
    return outputs


def postprocess_rows(
    captured: Dict[Tuple[int, int], Tuple], detections: Sequence[int], repeats: int, tiny: bool
) -> List[Dict[str, Any]]:
    """Time the post-processors on each captured (logits, instances, kwargs), per detections."""
    post = _postprocessors(tiny)
    rows = []
    for (h, w), (logits, instances, kwargs) in captured.items():
        order = torch.argsort(instances.scores, descending=True)
        for n in detections:
            subset = instances[order[:n]]

            def call(name, keys, logits=logits, subset=subset, kwargs=kwargs):
                return lambda: _read(post[name](logits, subset, **kwargs), keys)

            variants = {
                "d2": call("d2", EVERYTHING),
                "ours_panoptic": call("ours_panoptic", ("panoptic_seg",)),
                "ours": call("ours", EVERYTHING),
            }
            ref_out = variants["d2"]()
            same = panoptic_outputs_equal([variants["ours_panoptic"]()], [ref_out])
            times = time_interleaved(variants, repeats, warmup=0)
            for name, label in (("ours_panoptic", "panoptic only"), ("ours", "all outputs")):
                rows.append(
                    make_row(
                        "scaling",
                        f"post-processing {h}x{w}, {len(subset)} detections ({label})",
                        repeats,
                        "detectron2 post-processing",
                        ours_s=median(times[name]),
                        reference_s=median(times["d2"]),
                        stage="postprocess",
                        variant=label,
                        size=f"{h}x{w}",
                        pixels=h * w,
                        detections=len(subset),
                        identical=same is None,
                        ratio_of_min=min_ratio(times, name, "d2"),
                    )
                )
    return rows


def inference_rows(
    state_dict, cases: Sequence[Tuple[Tuple[int, int], int]], repeats: int, tiny: bool
) -> Tuple[List[Dict[str, Any]], Dict[Tuple[int, int], Tuple]]:
    """
    Time inference (detectron2 vs ours reading the panoptic output) per (size, detections)
    case; also return the raw post-processor inputs captured at each size with 100 detections.
    """
    models = build_models(state_dict, tiny=tiny)
    # the raw outputs of the model returning everything (every detection's mask)
    recorder = _Recorder(models["ours"].postprocessor)
    models["ours"].postprocessor = recorder
    rows, captured = [], {}
    # Warm-up on the smallest case (allocator, lazy initialisations).
    warm = inference_inputs([min(c[0] for c in cases)])
    infer(models["d2"], warm, ("panoptic_seg",))
    infer(models["ours_panoptic"], warm, ("panoptic_seg",))
    for size, detections in cases:
        for model in models.values():
            model.roi_heads.box_predictor.test_topk_per_image = detections
        inputs = inference_inputs([size])
        recorder.calls.clear()
        recorder.recording = True
        ref = infer(models["d2"], inputs, EVERYTHING)
        infer(models["ours"], inputs, EVERYTHING)
        recorder.recording = False
        ours = infer(models["ours_panoptic"], inputs, ("panoptic_seg",))
        same = panoptic_outputs_equal(ours, ref)
        if detections == max(c[1] for c in cases):
            captured[size] = recorder.call_inputs(0)
        recorder.calls.clear()
        found = len(ref[0]["instances"])
        del ref
        cpu: Dict[str, List[float]] = {}
        times = time_interleaved(
            {
                "d2": lambda inputs=inputs: infer(models["d2"], inputs, EVERYTHING),
                "ours": lambda inputs=inputs: infer(
                    models["ours_panoptic"], inputs, ("panoptic_seg",)
                ),
            },
            repeats,
            warmup=0,
            cpu_times=cpu,
        )
        rows.append(
            make_row(
                "scaling",
                f"inference {size[0]}x{size[1]}, {found} detections (panoptic only)",
                repeats,
                "detectron2 PanopticFPN",
                ours_s=median(times["ours"]),
                reference_s=median(times["d2"]),
                stage="inference",
                variant="panoptic only",
                size=f"{size[0]}x{size[1]}",
                pixels=size[0] * size[1],
                detections=found,
                identical=same is None,
                ratio_of_min=min_ratio(times, "ours", "d2"),
                cpu_ratio=median(cpu["ours"]) / median(cpu["d2"]),
            )
        )
    return rows, captured


def _closest(values: Sequence[int], target: int) -> int:
    return min(values, key=lambda v: abs(v - target))


def plot(rows: Sequence[Dict[str, Any]], path: str) -> None:
    """
    Two panels, log time axis: time vs megapixels (at the most detections) and time vs
    detections (at the size closest to 800x1216), for inference and post-processing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [  # (stage, variant, time key, label, style)
        ("inference", "panoptic only", "reference_s", "detectron2 inference", "C0-o"),
        ("inference", "panoptic only", "ours_s", "ours inference", "C1-o"),
        ("postprocess", "panoptic only", "reference_s", "detectron2 post-processing", "C0--s"),
        ("postprocess", "all outputs", "ours_s", "ours post-proc. (all outputs)", "C2--s"),
        ("postprocess", "panoptic only", "ours_s", "ours post-proc. (panoptic)", "C1--s"),
    ]
    base = INFERENCE_BASE_SIZE[0] * INFERENCE_BASE_SIZE[1]
    fig, (by_size_ax, by_dets_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage, variant, key, label, style in series:
        sel = [r for r in rows if r["stage"] == stage and r["variant"] == variant]
        if not sel:
            continue
        most = max(r["detections"] for r in sel)
        pts = sorted((r["pixels"] / 1e6, r[key]) for r in sel if r["detections"] == most)
        by_size_ax.plot(*zip(*pts), style, label=label)
        pixels = _closest([r["pixels"] for r in sel], base)
        pts = sorted((r["detections"], r[key]) for r in sel if r["pixels"] == pixels)
        by_dets_ax.plot(*zip(*pts), style, label=label)
    by_size_ax.set_xlabel("image size (megapixels)")
    by_size_ax.set_title("time vs image size (most detections)")
    by_dets_ax.set_xlabel("detections")
    by_dets_ax.set_title("time vs detections (about 800x1216)")
    for ax in (by_size_ax, by_dets_ax):
        ax.set_yscale("log")
        ax.set_ylabel("seconds (median)")
        ax.grid(True, which="both", alpha=0.3)
    by_size_ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    quick: bool = False,
    plot_path: Optional[str] = None,
    repeats: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """
    Inference time per image size (at most 100 detections) and per number of detections (at
    800x1216), and post-processing time per size x detections; writes the plot to
    ``plot_path`` (default benchmarks/scaling.png).

    Args:
        quick (bool): tiny model and sizes, one repeat.
        plot_path (str): where to write the PNG.
        repeats (int): timed rounds per case (default: inference 2, post-processing 3; 1 when
            quick).
    """
    sizes = QUICK_SIZES if quick else SIZES
    detections = QUICK_DETECTIONS if quick else DETECTIONS
    base_size = sizes[-1] if quick else INFERENCE_BASE_SIZE
    cases = [(size, max(detections)) for size in sizes]
    cases += [(base_size, n) for n in detections if n != max(detections)]
    state_dict = calibrated_state_dict(tiny=quick)
    rows, captured = inference_rows(state_dict, cases, repeats or (1 if quick else 2), quick)
    rows += postprocess_rows(captured, detections, repeats or (1 if quick else 3), quick)
    plot_path = plot_path or os.path.join(BENCH_DIR, "scaling.png")
    plot(rows, plot_path)
    shown = os.path.relpath(plot_path, REPO_ROOT)
    for row in rows:
        row["plot"] = plot_path if shown.startswith("..") else shown
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", default=None, help="PNG path (default benchmarks/scaling.png)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    from run_all import print_table

    print_table(run(args.quick, args.plot, args.repeats))


if __name__ == "__main__":
    sys.exit(main())
