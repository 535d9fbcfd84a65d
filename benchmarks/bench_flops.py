"""
Compute of the joint Panoptic FPN vs two separate networks (Mask R-CNN R50-FPN + Semantic FPN
R50), counted with fvcore's ``FlopCountAnalysis`` on one image, and parameters.

    python benchmarks/bench_flops.py [--quick] [--size 800x1216]

All models share the same (calibrated random) weights, so the instance branch keeps the same
detections in the joint and the separate model. Counted: backbone + FPN, RPN, ROI heads (box
head on the proposals, mask head on the detections) and the semantic head, without the
post-processing. fvcore counts one multiply-add as one flop.
"""

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from common import (
    build_with_weights,
    calibrated_state_dict,
    inference_inputs,
    make_row,
    ours_cfg,
    reference_cfg,
)
from torch import nn

from panoptic_ext.apps.ablation.compute import count_compute as count

MASK_RCNN_ZOO_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
SEMANTIC_FPN_ZOO_CONFIG = "Misc/semantic_R_50_FPN_1x.yaml"
DEFAULT_SIZE = (800, 1216)
QUICK_SIZE = (128, 160)


def build_separate(state_dict, tiny: bool) -> Dict[str, nn.Module]:
    """Mask R-CNN R50-FPN and Semantic FPN R50 (detectron2 model zoo) with the shared weights."""
    instance_keys = {k: v for k, v in state_dict.items() if not k.startswith("sem_seg_head.")}
    semantic_keys = {
        k: v
        for k, v in state_dict.items()
        if not k.startswith(("proposal_generator.", "roi_heads."))
    }
    semantic_cfg = reference_cfg(SEMANTIC_FPN_ZOO_CONFIG, tiny=tiny)
    semantic_cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 54  # COCO stuff + 'things', as Panoptic FPN
    return {
        "mask_rcnn": build_with_weights(
            reference_cfg(MASK_RCNN_ZOO_CONFIG, tiny=tiny), instance_keys
        ),
        "semantic_fpn": build_with_weights(semantic_cfg, semantic_keys),
    }


def run(quick: bool = False, size: Optional[Tuple[int, int]] = None) -> List[Dict[str, Any]]:
    """
    FLOPs and parameters of ours (joint) vs Mask R-CNN + Semantic FPN, and vs detectron2's
    PanopticFPN (a check: same architecture).

    Args:
        quick (bool): the tiny smoke-test model and a small image.
        size (tuple): (H, W) of the image; default 800x1216.
    """
    size = size or (QUICK_SIZE if quick else DEFAULT_SIZE)
    state_dict = calibrated_state_dict(tiny=quick)
    image = inference_inputs([size])[0]["image"]
    joint = count(build_with_weights(ours_cfg(tiny=quick), state_dict), image)
    separate = {
        name: count(model, image) for name, model in build_separate(state_dict, quick).items()
    }
    d2_joint = count(build_with_weights(reference_cfg(tiny=quick), state_dict), image)
    sep_gflops = sum(s["gflops"] for s in separate.values())
    sep_params = sum(s["params_m"] for s in separate.values())
    model = "tiny R18" if quick else "R50"
    workload = f"{model}-FPN, 1 image {size[0]}x{size[1]}, {joint['detections']} detections"
    separate_name = f"Mask R-CNN {model}-FPN + Semantic FPN {model} (detectron2 model zoo)"
    parts = {f"ours_{k}_gflops": round(v, 2) for k, v in joint["parts"].items()}
    return [
        make_row(
            "flops",
            f"{workload}: GFLOPs, joint vs separate",
            1,
            separate_name,
            unit="GFLOPs",
            ours_value=joint["gflops"],
            reference_value=sep_gflops,
            ratio=joint["gflops"] / sep_gflops,
            mask_rcnn_gflops=round(separate["mask_rcnn"]["gflops"], 2),
            semantic_fpn_gflops=round(separate["semantic_fpn"]["gflops"], 2),
            paper="about 0.5x",
            **parts,
        ),
        make_row(
            "flops",
            f"{workload}: parameters, joint vs separate",
            1,
            separate_name,
            unit="M params",
            ours_value=joint["params_m"],
            reference_value=sep_params,
            ratio=joint["params_m"] / sep_params,
            mask_rcnn_params_m=round(separate["mask_rcnn"]["params_m"], 2),
            semantic_fpn_params_m=round(separate["semantic_fpn"]["params_m"], 2),
        ),
        make_row(
            "flops",
            f"{workload}: GFLOPs, ours vs detectron2 (same architecture)",
            1,
            "detectron2 PanopticFPN",
            unit="GFLOPs",
            ours_value=joint["gflops"],
            reference_value=d2_joint["gflops"],
            ratio=joint["gflops"] / d2_joint["gflops"],
            reference_params_m=round(d2_joint["params_m"], 2),
            ours_params_m=round(joint["params_m"], 2),
        ),
    ]


def _parse_size(text: str) -> Tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=_parse_size, default=None, help="HxW")
    args = parser.parse_args(argv)
    from run_all import print_table

    print_table(run(args.quick, args.size))


if __name__ == "__main__":
    sys.exit(main())
