"""
Panoptic post-processing, ours vs detectron2, side by side on the same synthetic head outputs.

    python benchmarks/bench_postprocess.py [--quick] [--repeats N] [--threads N] [--json FILE]

Inputs (seeded): semantic logits at 1/4 scale (54 classes, region-like), and 100 detections with
boxes, scores, classes and 28x28 mask probabilities, for 800x1216 and 1024x2048 images:
"random" (random boxes and scores, ~40 confident); "proposals-wide" / "proposals-large" (the
issue's workload: 100 confident detections on RPN-like proposals, sides 16 px or 128 px up to the
short side, masks of an untrained mask head); and a crowded 800x1216 scene ("crowded": 100
confident detections with large boxes (250-450 px) and noisy masks, ~90 of them placed).

* reference: what detectron2's ``PanopticFPN.inference`` does after its heads returned:
  ``sem_seg_postprocess`` + ``detector_postprocess`` + argmax +
  ``combine_semantic_and_instance_outputs``, starting from the full-resolution logits its
  semantic head returns (the head's own 4x upsampling is not counted);
* ours: panoptic_ext's "fast" post-processor configured to return the panoptic output only,
  and returning every output ("sem_seg", "instances", "panoptic_seg": what DefaultPredictor
  users get), both starting from the 1/4-scale logits (so their timing includes the semantic
  map's resizing); for information, the reference with its head's upsampling included.

The outputs must be identical (segment maps and segments_info; all outputs: the logits and masks
too); the ratio ours / reference must be at most 0.25 with the panoptic output only (0.1 on the
random workload) and at most 0.5 with every output, on every workload: the last two rows are the
worst cases.
"""

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
from common import make_row, median
from torch.nn import functional as F

SIZES = ((800, 1216), (1024, 2048))
QUICK_SIZES = ((200, 256),)
NUM_DETECTIONS = 100
NUM_CLASSES = 54
# Targets of ours / detectron2 per workload: (panoptic output only, every output read).
TARGETS = {
    "random": (0.1, 0.5),
    "crowded": (0.25, 0.5),
    "proposals-wide": (0.25, 0.5),
    "proposals-large": (0.25, 0.5),
}
PROPOSAL_WORKLOADS = ("proposals-wide", "proposals-large")
EVERYTHING = ("sem_seg", "instances", "panoptic_seg")


def synthetic_sem_logits(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(54, h, w) logits like a trained head's: ~12 regions of one confident class each, smooth
    transitions at their borders, a low-frequency background and a little noise."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(12, 2, generator=g) * torch.tensor([float(h), float(w)])
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    dist = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
    region_class = torch.randint(0, NUM_CLASSES, (12,), generator=g)[dist.argmin(dim=0)]
    onehot = F.one_hot(region_class, NUM_CLASSES).permute(2, 0, 1).float()
    coarse = torch.randn(1, NUM_CLASSES, max(2, h // 32), max(2, w // 32), generator=g)
    background = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    logits = F.avg_pool2d((6 * onehot + background - 2)[None], 5, 1, 2, count_include_pad=False)
    return (logits[0] + 0.05 * torch.randn(NUM_CLASSES, h, w, generator=g)).contiguous()


def synthetic_instances(
    height: int, width: int, n: int = NUM_DETECTIONS, seed: int = 0, crowded: bool = False
):
    """Raw ROI-head output: n detections with blob-shaped masks and scores uniform in [0, 1], or
    (``crowded``) all confident, with large boxes (250-450 px) and noisy, sparse masks."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed + 1)
    if crowded:  # large boxes anywhere, noisy sparse masks: most of them get placed
        size = 250 + torch.rand(n, 2, generator=g) * 200
        center = torch.rand(n, 2, generator=g) * torch.tensor([float(width), float(height)])
        scores = 0.5 + 0.5 * torch.rand(n, generator=g)
        mask_logits = 2.0 * torch.randn(n, 1, 28, 28, generator=g) - 2.0
    else:
        size = torch.rand(n, 2, generator=g) * (min(height, width) / 2.5) + 16
        center = torch.rand(n, 2, generator=g) * torch.tensor([float(width), float(height)])
        scores = torch.rand(n, generator=g)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
        blob = 6 * (0.8 - yy**2 - xx**2)
        mask_logits = blob[None, None] + 1.5 * torch.randn(n, 1, 28, 28, generator=g)
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    instances = Instances((height, width))
    instances.pred_boxes = Boxes(boxes)
    instances.scores = scores.sort(descending=True).values
    instances.pred_classes = torch.randint(0, 80, (n,), generator=g)
    instances.pred_masks = torch.sigmoid(mask_logits)
    return instances


def proposal_instances(
    height: int, width: int, n: int = NUM_DETECTIONS, seed: int = 0, sizes: str = "wide"
):
    """
    Raw ROI-head output like the issue's workload: n confident detections (scores 0.5-1) whose
    boxes look like RPN proposals (anchor aspect ratios 0.5 / 1 / 2, jittered, sides
    log-uniform: "wide" from 16 px to the image's short side, "large" from 128 px), and masks
    from an untrained mask head (detectron2's MaskRCNNConvUpsampleHead at its initialization on
    smooth random ROI features: probabilities near 0.5, noisy after thresholding).
    """
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed + 2)
    low = {"wide": 16.0, "large": 128.0}[sizes]
    high = float(min(height, width))
    side = torch.exp(math.log(low) + torch.rand(n, generator=g) * math.log(high / low))
    ratio = torch.tensor([0.5, 1.0, 2.0])[torch.randint(0, 3, (n,), generator=g)]
    ratio = ratio * torch.exp(0.2 * torch.randn(n, generator=g))
    size = torch.stack([side / ratio.sqrt(), side * ratio.sqrt()], dim=1)  # (w, h)
    center = torch.rand(n, 2, generator=g) * torch.tensor([float(width), float(height)])
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)

    cfg = get_cfg()
    torch.manual_seed(seed)
    head = MaskRCNNConvUpsampleHead(cfg, ShapeSpec(channels=256, width=14, height=14)).eval()
    features = F.avg_pool2d(torch.randn(n, 256, 18, 18, generator=g), 5, 1).relu()
    with torch.no_grad():
        mask_logits = head.layers(features)
    classes = torch.randint(0, 80, (n,), generator=g)
    instances = Instances((height, width))
    instances.pred_boxes = Boxes(boxes)
    instances.scores = (0.5 + 0.5 * torch.rand(n, generator=g)).sort(descending=True).values
    instances.pred_classes = classes
    instances.pred_masks = torch.sigmoid(mask_logits[torch.arange(n), classes][:, None])
    return instances


def detectron2_postprocess(sem_seg_result, instances, image_size, output_size):
    """Exactly the post-processing part of detectron2's PanopticFPN.inference."""
    from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
    from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
    from detectron2.structures import Boxes, Instances

    detector_result = Instances(instances.image_size, **instances.get_fields())
    detector_result.pred_boxes = Boxes(instances.pred_boxes.tensor.clone())  # it scales in place
    height, width = output_size
    sem_seg_r = sem_seg_postprocess(sem_seg_result, image_size, height, width)
    detector_r = detector_postprocess(detector_result, height, width)
    panoptic_r = combine_semantic_and_instance_outputs(
        detector_r, sem_seg_r.argmax(dim=0), 0.5, 4096, 0.5
    )
    return {"sem_seg": sem_seg_r, "instances": detector_r, "panoptic_seg": panoptic_r}


def _fast_postprocessor(all_outputs: bool):
    from detectron2.config import get_cfg

    from panoptic_ext import add_panoptic_ext_config
    from panoptic_ext.modeling import FastPanopticPostprocessor

    cfg = get_cfg()
    add_panoptic_ext_config(cfg)  # defaults: detectron2's thresholds, 54 classes
    cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_SEM_SEG = all_outputs
    cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES = all_outputs
    return FastPanopticPostprocessor(cfg)


def _same_panoptic(ours, reference) -> bool:
    (seg_a, info_a), (seg_b, info_b) = ours["panoptic_seg"], reference["panoptic_seg"]
    return bool(torch.equal(seg_a, seg_b)) and info_a == info_b


def _read(outputs, keys: Sequence[str]):
    for key in keys:
        outputs[key]
    return outputs


def time_both(
    variants: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """
    Like ``common.time_interleaved`` (alternating order, side by side), recording wall-clock and
    process CPU time: on a loaded machine CPU time is the steadier measure of the work done
    (with one thread; with more, OpenMP spin-waiting counts too).
    """
    names = list(variants)
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    for i in range(warmup + repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            variants[name]()
            if i >= warmup:
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
    return wall, cpu


def bench_size(
    size: Tuple[int, int], repeats: int, seed: int = 0, workload: str = "random"
) -> List[Dict[str, Any]]:
    """Rows for one image size: reference vs ours (panoptic only), plus the informative ones."""
    height, width = size
    logits = synthetic_sem_logits(height // 4, width // 4, seed)
    if workload.startswith("proposals"):
        instances = proposal_instances(height, width, seed=seed, sizes=workload.split("-")[1])
    else:
        instances = synthetic_instances(height, width, seed=seed, crowded=workload == "crowded")
    up = F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    fast, fast_all = _fast_postprocessor(False), _fast_postprocessor(True)
    kwargs = {"stride": 4, "image_size": size, "output_size": size}

    variants = {
        "reference": lambda: detectron2_postprocess(up, instances, size, size),
        "ours": lambda: _read(fast(logits, instances, **kwargs), ("panoptic_seg",)),
        "ours_all": lambda: _read(fast_all(logits, instances, **kwargs), EVERYTHING),
        "reference_with_head_upsample": lambda: detectron2_postprocess(
            F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0],
            instances,
            size,
            size,
        ),
    }
    reference = variants["reference"]()
    ours_all = variants["ours_all"]()
    identical = _same_panoptic(ours_all, reference)
    identical_all = (
        identical
        and torch.equal(ours_all["sem_seg"], reference["sem_seg"])
        and torch.equal(ours_all["instances"].pred_masks, reference["instances"].pred_masks)
    )
    info = reference["panoptic_seg"][1]
    del reference, ours_all
    # The headline pairs first, each alone: the other variants allocate gigabytes, which would
    # change the allocator's state (page faults) between the timed runs.
    times, cpu = time_both({k: variants[k] for k in ("reference", "ours")}, repeats)
    all_times, all_cpu = time_both({k: variants[k] for k in ("reference", "ours_all")}, repeats)
    more, _ = time_both(
        {k: variants[k] for k in ("reference", "reference_with_head_upsample")},
        max(2, repeats // 2),
    )
    times["ours_all"] = all_times["ours_all"]
    times["reference_with_head_upsample"] = more["reference_with_head_upsample"]
    target, target_all = TARGETS[workload]
    workload = f"{workload}: {NUM_DETECTIONS} dets, {height}x{width}"
    common = {
        "things": sum(s["isthing"] for s in info),
        "stuff": sum(not s["isthing"] for s in info),
        "above_score_threshold": int((instances.scores >= 0.5).sum()),
        "threads": torch.get_num_threads(),
        "ours_cpu_s": median(cpu["ours"]),
        "reference_cpu_s": median(cpu["reference"]),
        "cpu_ratio": median(cpu["ours"]) / median(cpu["reference"]),
    }
    reference_s = median(times["reference"])
    return [
        make_row(
            "postprocess",
            f"{workload} (panoptic)",
            repeats,
            "detectron2 sem_seg_postprocess+detector_postprocess+combine",
            ours_s=median(times["ours"]),
            reference_s=reference_s,
            target=target,
            identical=identical,
            outputs="panoptic",
            load_average=_load(),
            **common,
        ),
        make_row(
            "postprocess",
            f"{workload} (all outputs read)",
            repeats,
            "detectron2 sem_seg_postprocess+detector_postprocess+combine",
            ours_s=median(all_times["ours_all"]),
            reference_s=median(all_times["reference"]),
            target=target_all,
            identical=identical_all,
            outputs="all",
            cpu_ratio=median(all_cpu["ours_all"]) / median(all_cpu["reference"]),
            load_average=_load(),
        ),
        make_row(
            "postprocess",
            f"{workload} (panoptic; reference incl. head 4x upsample)",
            repeats,
            "detectron2 head upsample+post-processing",
            ours_s=median(times["ours"]),
            reference_s=median(times["reference_with_head_upsample"]),
            identical=identical,
        ),
    ]


def _load() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else -1.0


def worst_case_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per output mode: the workload with the highest ratio, against the mode's target
    (0.25 panoptic only, 0.5 every output)."""
    worst = []
    for outputs, target in (("panoptic", 0.25), ("all", 0.5)):
        mode = [r for r in rows if r.get("outputs") == outputs]
        if not mode:
            continue
        row = dict(max(mode, key=lambda r: r["ratio"]))
        row.update(
            workload=f"worst case ({outputs} outputs) = {row['workload']}",
            target=target,
            met=bool(row["ratio"] <= target) and row.get("identical") is not False,
            workloads=len(mode),
        )
        worst.append(row)
    return worst


def run(quick: bool = False, repeats: int = 0) -> List[Dict[str, Any]]:
    """All rows (``benchmarks/run_all.py`` calls this), the worst cases last."""
    sizes = QUICK_SIZES if quick else SIZES
    repeats = repeats or (2 if quick else 5)
    rows = []
    for size in sizes:
        rows += bench_size(size, repeats)
        for workload in PROPOSAL_WORKLOADS:
            rows += bench_size(size, repeats, workload=workload)
    rows += bench_size(sizes[0], repeats, workload="crowded")
    return rows + worst_case_rows(rows)


def _print_table(rows: Sequence[Dict[str, Any]]) -> None:
    print(f"{'workload':64s} {'ours':>9s} {'reference':>10s} {'ratio':>7s}  identical  target")
    for r in rows:
        target = "-"
        if r["target"] is not None:
            target = f"<={r['target']} {'met' if r['met'] else 'MISSED'}"
        print(
            f"{r['workload']:64s} {r['ours_s']:8.4f}s {r['reference_s']:9.4f}s "
            f"{r['ratio']:7.4f}  {str(r.get('identical')):9s}  {target}"
        )
        if "ours_cpu_s" in r:
            label = f"  same, CPU time ({r['threads']} threads)"
            print(
                f"{label:64s} {r['ours_cpu_s']:8.4f}s {r['reference_cpu_s']:9.4f}s "
                f"{r['cpu_ratio']:7.4f}"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small size, 2 repeats")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per variant")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(quick=args.quick, repeats=args.repeats)
    _print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if all(r.get("identical") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
