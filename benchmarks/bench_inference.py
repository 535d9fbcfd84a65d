"""
End-to-end inference: panoptic_ext's ``PanopticFPNExt`` vs detectron2's ``PanopticFPN``, same
weights, same images, side by side; identical panoptic outputs asserted; peak memory of each in
its own process.

    python benchmarks/bench_inference.py [--quick] [--size 800x1216] [--repeats 3]
    python benchmarks/bench_inference.py --stages [--threads 1]   # time of each stage
    python benchmarks/bench_inference.py --speedups    # what each CPU speed-up saves
"""

import argparse
import copy
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from common import (
    build_with_weights,
    calibrated_state_dict,
    current_rss_mb,
    emit_worker_result,
    inference_inputs,
    machine_limit,
    make_row,
    measure_machine_limit,
    median,
    min_ratio,
    ours_cfg,
    panoptic_outputs_equal,
    peak_rss_mb,
    reference_cfg,
    reset_peak_rss,
    run_worker,
    throughput,
    time_interleaved,
)

from panoptic_ext.modeling import CPU_SPEEDUPS, optimize_for_cpu_inference

REFERENCE = "detectron2 PanopticFPN"
TARGET = 0.7  # issue 23 (was 0.8)
# Variants: name -> (model, outputs read). "ours" returns every output detectron2 returns
# (sem_seg logits, instances, panoptic_seg); "ours_panoptic" is configured to return only
# panoptic_seg (POSTPROCESS.RETURN_SEM_SEG / RETURN_INSTANCES False), all a panoptic user needs.
# Both are set up as README recommends for CPU inference: optimize_for_cpu_inference(model).
VARIANTS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "d2": ("d2", ("sem_seg", "instances", "panoptic_seg")),
    "ours": ("ours", ("sem_seg", "instances", "panoptic_seg")),
    "ours_panoptic": ("ours_panoptic", ("panoptic_seg",)),
}
LABELS = {"ours": "all outputs", "ours_panoptic": "panoptic only"}
DEFAULT_SIZE = (800, 1216)
QUICK_SIZE = (128, 160)


def build_models(
    state_dict,
    names: Sequence[str] = ("d2", "ours", "ours_panoptic"),
    detections_per_image: int = 100,
    tiny: bool = False,
    speedups: Sequence[str] = CPU_SPEEDUPS,
) -> Dict[str, torch.nn.Module]:
    """
    detectron2's PanopticFPN ("d2") and/or ours ("ours": all outputs, "ours_panoptic": panoptic
    output only, with ``speedups`` of ``optimize_for_cpu_inference``) with the shared weights,
    keeping at most ``detections_per_image`` (``tiny``: the smoke-test model).
    """
    cfgs = {
        "d2": lambda: reference_cfg(tiny=tiny),
        "ours": lambda: ours_cfg(tiny=tiny),
        "ours_panoptic": lambda: ours_cfg(tiny=tiny, RETURN_SEM_SEG=False, RETURN_INSTANCES=False),
    }
    models = {name: build_with_weights(cfgs[name](), state_dict) for name in names}
    for name, model in models.items():
        model.roi_heads.box_predictor.test_topk_per_image = detections_per_image
        if name != "d2":
            optimize_for_cpu_inference(model, speedups)
    return models


def infer(model: torch.nn.Module, inputs: List[Dict[str, Any]], keys: Sequence[str]) -> List:
    """Run inference and read the outputs ``keys``."""
    with torch.no_grad():
        outputs = model(inputs)
        for out in outputs:
            for key in keys:
                out[key]
    return outputs


def variant_callables(
    models: Dict[str, torch.nn.Module], inputs: List[Dict[str, Any]], names: Sequence[str]
) -> Dict[str, Callable[[], List]]:
    def make(name):
        model_name, keys = VARIANTS[name]
        return lambda: infer(models[model_name], inputs, keys)

    return {name: make(name) for name in names}


def outputs_identical(
    ours: List, reference: List, keys: Sequence[str] = ("panoptic_seg", "sem_seg", "instances")
) -> Dict[str, Optional[str]]:
    """What differs between ours and detectron2's outputs, per output (None = identical)."""
    diffs: Dict[str, Optional[str]] = {"panoptic_seg": panoptic_outputs_equal(ours, reference)}
    sem, inst = None, None
    for i, (a, b) in enumerate(zip(ours, reference)):
        if "sem_seg" in keys and sem is None and not torch.equal(a["sem_seg"], b["sem_seg"]):
            sem = f"image {i}: sem_seg logits differ"
        if "instances" not in keys:
            continue
        ia, ib = a["instances"], b["instances"]
        if inst is None and not (
            len(ia) == len(ib)
            and torch.equal(ia.pred_boxes.tensor, ib.pred_boxes.tensor)
            and torch.equal(ia.scores, ib.scores)
            and torch.equal(ia.pred_classes, ib.pred_classes)
            and torch.equal(ia.pred_masks, ib.pred_masks)
        ):
            inst = f"image {i}: instances differ"
    diffs.update(sem_seg=sem, instances=inst)
    return diffs


class _MaskHeadLayers(torch.nn.Module):
    """A mask head's ``layers`` as a module, for fvcore."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.layers(x)


def executed_multiply_adds(
    model: torch.nn.Module, image: torch.Tensor, scores: torch.Tensor, score_threshold: float = 0.5
) -> Dict[str, float]:
    """
    fvcore's multiply-adds (as benchmarks/bench_flops.py counts them) that each variant executes
    on ``image``: detectron2's model and ours with every output run the mask head on every
    detection; ours with the panoptic output only, on the detections scoring at least
    ``score_threshold`` (padded to a batch of 16, as PanopticROIHeads does; ``scores`` are the
    detections' scores).
    """
    from fvcore.nn import FlopCountAnalysis

    from panoptic_ext.apps.ablation.compute import count_compute

    total = count_compute(model, image)["gflops"] * 1e9
    heads = model.roi_heads
    in_channels = [s.channels for s in model.backbone.output_shape().values()][0]
    side = int(heads.mask_pooler.output_size[0])
    analysis = FlopCountAnalysis(
        _MaskHeadLayers(heads.mask_head).eval(), (torch.zeros(1, in_channels, side, side),)
    )
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        per_roi = float(analysis.total())
    needed = int((scores >= score_threshold).sum())
    rows = 0 if needed == 0 else max(needed, min(len(scores), 16))
    skipped = len(scores) - rows
    return {"d2": total, "ours": total, "ours_panoptic": total - skipped * per_roi}


def _worker(variant: str, weights: str, height: int, width: int, tiny: bool) -> None:
    """Build one variant in this fresh process, run one inference, report time and memory."""
    state_dict = torch.load(weights, map_location="cpu")
    models = build_models(state_dict, [VARIANTS[variant][0]], tiny=tiny)
    del state_dict
    inputs = inference_inputs([(height, width)])
    call = variant_callables(models, inputs, [variant])[variant]
    before = current_rss_mb()
    reset_peak_rss()
    start = time.perf_counter()
    call()
    elapsed = time.perf_counter() - start
    peak = peak_rss_mb()
    emit_worker_result(
        {"peak_rss_mb": peak, "rss_before_mb": before, "delta_mb": peak - before, "s": elapsed}
    )


def measure_memory(
    state_dict, size: Tuple[int, int], tiny: bool = False
) -> Dict[str, Dict[str, float]]:
    """Peak RSS of one inference per variant, each in a fresh process (its time is not used)."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.pth")
        torch.save(state_dict, weights)
        args = ["--weights", weights, "--size", f"{size[0]}x{size[1]}"]
        args += ["--quick"] if tiny else []
        # Concurrent processes: a process's peak RSS does not depend on the others.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            futures = {
                name: pool.submit(run_worker, "bench_inference.py", ["--variant", name, *args])
                for name in VARIANTS
            }
            return {name: f.result() for name, f in futures.items()}


def run(
    quick: bool = False,
    size: Optional[Tuple[int, int]] = None,
    repeats: Optional[int] = None,
    memory: bool = True,
) -> List[Dict[str, Any]]:
    """
    Time detectron2's PanopticFPN and ours (both output modes) on one image, interleaved.

    Args:
        quick (bool): tiny model and image, one repeat (smoke test).
        size (tuple): (H, W) of the image; default 800x1216 (128x160 when quick).
        repeats (int): timed rounds (default 5, 1 when quick), after one warm-up round.
        memory (bool): also measure each variant's peak RSS in its own process.
    """
    size = size or (QUICK_SIZE if quick else DEFAULT_SIZE)
    repeats = repeats or (1 if quick else 5)
    state_dict = calibrated_state_dict(tiny=quick)
    models = build_models(state_dict, tiny=quick)
    inputs = inference_inputs([size])
    calls = variant_callables(models, inputs, list(VARIANTS))
    # The first run of each is the warm-up, and gives the outputs compared.
    reference = calls["d2"]()
    diffs = outputs_identical(calls["ours"](), reference)
    diffs_panoptic = outputs_identical(calls["ours_panoptic"](), reference, ("panoptic_seg",))
    diffs["panoptic_only"] = diffs_panoptic["panoptic_seg"]
    things = sum(s["isthing"] for r in reference for s in r["panoptic_seg"][1])
    detections = sum(len(r["instances"]) for r in reference)
    confident = sum(int((r["instances"].scores >= 0.5).sum()) for r in reference)
    macs = executed_multiply_adds(
        models["d2"], inputs[0]["image"], reference[0]["instances"].scores
    )
    limit = machine_limit(quick)
    del reference

    cpu: Dict[str, List[float]] = {}
    times = time_interleaved(calls, repeats, warmup=0, cpu_times=cpu)
    # the limit measured again beside these timings: the higher of the two
    fp32_limit = max(limit["fp32_gflops"], measure_machine_limit(quick, 2)["fp32_gflops"])
    del models, calls
    mem = measure_memory(state_dict, size, tiny=quick) if memory else {}
    ref_s = median(times["d2"])
    workload = (
        f"{'tiny R18' if quick else 'R50'}-FPN, 1 image {size[0]}x{size[1]}, "
        f"{detections} detections ({confident} with score >= 0.5), {things} thing segments"
    )
    rows = []
    for name, label in LABELS.items():
        keys = VARIANTS[name][1]
        extra: Dict[str, Any] = {
            "variant": label,
            "ratio_of_min": min_ratio(times, name, "d2"),
            "cpu_ratio": median(cpu[name]) / median(cpu["d2"]),
            # every output the variant reads equals detectron2's
            "identical": all(diffs[k] is None for k in keys)
            and (name != "ours_panoptic" or diffs["panoptic_only"] is None),
            "identical_outputs": ",".join(k for k in keys if diffs[k] is None),
        }
        ours_rate = throughput(macs[name], median(times[name]), fp32_limit)
        reference_rate = throughput(macs["d2"], median(times["d2"]), fp32_limit)
        extra.update(
            executed_gmacs=round(macs[name] / 1e9, 2),
            reference_executed_gmacs=round(macs["d2"] / 1e9, 2),
            ours_gflops_per_s=round(ours_rate["gflops_per_s"], 2),
            reference_gflops_per_s=round(reference_rate["gflops_per_s"], 2),
            ours_share_of_limit=round(ours_rate["share_of_limit"], 4),
            reference_share_of_limit=round(reference_rate["share_of_limit"], 4),
            fp32_limit_gflops_per_s=round(fp32_limit, 2),
            load_average=round(os.getloadavg()[0], 2),
        )
        different = [diffs[k] for k in keys if diffs[k] is not None]
        if different:
            extra["difference"] = "; ".join(different)
        if mem:
            extra.update(
                ours_peak_rss_mb=round(mem[name]["peak_rss_mb"], 1),
                reference_peak_rss_mb=round(mem["d2"]["peak_rss_mb"], 1),
                ours_inference_mem_mb=round(mem[name]["delta_mb"], 1),
                reference_inference_mem_mb=round(mem["d2"]["delta_mb"], 1),
            )
        rows.append(
            make_row(
                "inference",
                f"{workload} ({label})",
                repeats,
                REFERENCE,
                ours_s=median(times[name]),
                reference_s=ref_s,
                target=TARGET,
                **extra,
            )
        )
    return rows


def stage_times(
    models: Dict[str, torch.nn.Module], inputs: List[Dict[str, Any]], repeats: int = 3
) -> Dict[str, Dict[str, float]]:
    """
    Median wall time of each stage of detectron2's PanopticFPN.inference and of ours (panoptic
    output only), each model running its own modules (public calls only) on its own
    intermediate results, stage by stage, interleaved.

    Returns:
        dict stage -> {"d2": seconds, "ours": seconds}.
    """
    from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
    from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess

    height, width = inputs[0]["height"], inputs[0]["width"]
    names = {"d2": "d2", "ours": "ours_panoptic"}
    state: Dict[str, Any] = {}

    def backbone(name):
        model = models[names[name]]
        state["images"] = model.preprocess_image(inputs)
        state["features"] = model.backbone(state["images"].tensor)

    def rpn(name):
        proposals = models[names[name]].proposal_generator(state["images"], state["features"], None)
        state["proposals"] = proposals[0]

    def roi_heads(name):
        model = models[names[name]]
        state[name + "_detections"] = model.roi_heads(
            state["images"], state["features"], state["proposals"], None
        )[0]

    def sem_seg_head(name):
        model = models[names[name]]
        if name == "d2":
            state["d2_sem"] = model.sem_seg_head(state["features"], None)[0]
        else:
            state["ours_sem"] = model.sem_seg_head.layers(state["features"])

    def postprocess(name):
        if name == "d2":
            image_size = state["images"].image_sizes[0]
            sem = sem_seg_postprocess(state["d2_sem"][0], image_size, height, width)
            dets = detector_postprocess(copy.copy(state["d2_detections"][0]), height, width)
            combine_semantic_and_instance_outputs(dets, sem.argmax(dim=0), 0.5, 4096, 0.5)
            return
        model = models[names[name]]
        model.postprocessor(
            state["ours_sem"][0],
            state["ours_detections"][0],
            stride=model.sem_seg_head.common_stride,
            image_size=state["images"].image_sizes[0],
            output_size=(height, width),
        )

    stages = {
        "backbone": backbone,
        "RPN": rpn,
        "ROI heads (box + mask)": roi_heads,
        "semantic head": sem_seg_head,
        "post-processing": postprocess,
    }
    times: Dict[str, Dict[str, List[float]]] = {s: {"d2": [], "ours": []} for s in stages}
    with torch.no_grad():
        for i in range(repeats + 1):  # the first round warms up
            # the order of the models alternates between rounds
            for name in ("d2", "ours") if i % 2 == 0 else ("ours", "d2"):
                for stage, fn in stages.items():
                    start = time.perf_counter()
                    fn(name)
                    times[stage][name].append(time.perf_counter() - start)
    return {s: {n: median(t[1:]) for n, t in per.items()} for s, per in times.items()}


def speedup_times(
    state_dict, size: Tuple[int, int], repeats: int = 3, tiny: bool = False
) -> Dict[str, float]:
    """
    Median time of the panoptic-only model with every CPU speed-up, with none, and with each
    one left out; and with detectron2's StandardROIHeads instead of PanopticROIHeads (masks of
    every detection). Interleaved, one image.
    """
    variants: Dict[str, torch.nn.Module] = {}
    for name, speedups in [("all", CPU_SPEEDUPS), ("none", ())] + [
        (f"without {s}", [t for t in CPU_SPEEDUPS if t != s]) for s in CPU_SPEEDUPS
    ]:
        variants[name] = build_models(state_dict, ["ours_panoptic"], tiny=tiny, speedups=speedups)[
            "ours_panoptic"
        ]
    cfg = ours_cfg(tiny=tiny, RETURN_SEM_SEG=False, RETURN_INSTANCES=False)
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    standard = build_with_weights(cfg, state_dict)
    standard.roi_heads.box_predictor.test_topk_per_image = 100
    optimize_for_cpu_inference(standard)
    variants["all, masks of every detection"] = standard
    inputs = inference_inputs([size])
    calls = {n: (lambda m=m: infer(m, inputs, ("panoptic_seg",))) for n, m in variants.items()}
    times = time_interleaved(calls, repeats, warmup=1)
    return {name: median(t) for name, t in times.items()}


def print_speedup_times(times: Dict[str, float]) -> None:
    base = times["all"]
    print(f"{'variant':34s} {'time':>8s} {'vs all':>8s}")
    for name, t in times.items():
        print(f"{name:34s} {t:6.3f} s {t - base:+7.3f} s")


def print_stage_times(stages: Dict[str, Dict[str, float]]) -> None:
    print(f"{'stage':24s} {'detectron2':>11s} {'ours':>9s} {'ratio':>7s}")
    for name, t in stages.items():
        print(f"{name:24s} {t['d2']:9.3f} s {t['ours']:7.3f} s {t['ours'] / t['d2']:7.3f}")
    d2 = sum(t["d2"] for t in stages.values())
    ours = sum(t["ours"] for t in stages.values())
    print(f"{'sum':24s} {d2:9.3f} s {ours:7.3f} s {ours / d2:7.3f}")


def _parse_size(text: str) -> Tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=_parse_size, default=None, help="HxW")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--stages", action="store_true", help="print the time of each stage instead"
    )
    parser.add_argument(
        "--speedups", action="store_true", help="print what each CPU speed-up saves instead"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.variant, args.weights, *args.size, tiny=args.quick)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (QUICK_SIZE if args.quick else DEFAULT_SIZE)
    if args.stages:
        models = build_models(calibrated_state_dict(tiny=args.quick), tiny=args.quick)
        print_stage_times(stage_times(models, inference_inputs([size]), args.repeats or 3))
        return
    if args.speedups:
        state_dict = calibrated_state_dict(tiny=args.quick)
        print_speedup_times(speedup_times(state_dict, size, args.repeats or 3, args.quick))
        return
    from run_all import print_table

    print_table(run(args.quick, size, args.repeats))


if __name__ == "__main__":
    sys.exit(main())
