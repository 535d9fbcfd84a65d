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

import torch
from common import (
    build_with_weights,
    calibrated_state_dict,
    inference_inputs,
    make_row,
    ours_cfg,
    reference_cfg,
)
from torch import nn

MASK_RCNN_ZOO_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
SEMANTIC_FPN_ZOO_CONFIG = "Misc/semantic_R_50_FPN_1x.yaml"
DEFAULT_SIZE = (800, 1216)
QUICK_SIZE = (128, 160)
# detectron2's list of elementwise / reduction ops that its FlopCountAnalysis does not count.
_IGNORED_OPS = (
    "aten::add aten::add_ aten::argmax aten::argsort aten::batch_norm aten::constant_pad_nd "
    "aten::div aten::div_ aten::exp aten::log2 aten::max_pool2d aten::meshgrid aten::mul "
    "aten::mul_ aten::neg aten::nonzero_numpy aten::reciprocal aten::rsub aten::sigmoid "
    "aten::sigmoid_ aten::softmax aten::sort aten::sqrt aten::sub torchvision::nms"
).split()


class RawInference(nn.Module):
    """
    A detectron2 model's inference on one image tensor without post-processing, returning
    tensors only (so fvcore can trace it): boxes, scores, mask probabilities of the detections
    and the semantic head's output, for whichever of the branches the model has.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        from detectron2.structures import ImageList

        m = self.model
        # GeneralizedRCNN.preprocess_image (SemanticSegmentor has none in detectron2 v0.6)
        normalized = (image.to(m.pixel_mean.device) - m.pixel_mean) / m.pixel_std
        images = ImageList.from_tensors([normalized], m.backbone.size_divisibility)
        features = m.backbone(images.tensor)
        outputs: List[torch.Tensor] = []
        if getattr(m, "proposal_generator", None) is not None:
            proposals, _ = m.proposal_generator(images, features, None)
            instances, _ = m.roi_heads(images, features, proposals, None)
            outputs += [instances[0].pred_boxes.tensor, instances[0].scores]
            outputs.append(instances[0].pred_masks)
        if getattr(m, "sem_seg_head", None) is not None:
            sem_seg, _ = m.sem_seg_head(features, None)
            outputs.append(sem_seg)
        return tuple(outputs)


def count(model: nn.Module, image: torch.Tensor) -> Dict[str, Any]:
    """GFLOPs (total and per top-level part), parameters (M) and detections of one model."""
    import logging

    from fvcore.nn import FlopCountAnalysis, parameter_count

    wrapper = RawInference(model.eval())
    detections: List[int] = []
    hook = None
    if getattr(model, "roi_heads", None) is not None:  # count the detections while tracing
        hook = model.roi_heads.register_forward_hook(
            lambda module, inputs, output: detections.append(len(output[0][0]))
        )
    analysis = FlopCountAnalysis(wrapper, (image,))
    analysis.set_op_handle(**dict.fromkeys(_IGNORED_OPS))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with torch.no_grad():
        total = analysis.total()
        by_module = analysis.by_module()
    if hook is not None:
        hook.remove()
    parts = {
        name: by_module.get(f"model.{name}", 0) / 1e9
        for name in ("backbone", "proposal_generator", "roi_heads", "sem_seg_head")
        if getattr(model, name, None) is not None
    }
    return {
        "gflops": total / 1e9,
        "parts": parts,
        "params_m": parameter_count(model)[""] / 1e6,
        "detections": detections[0] if detections else 0,
    }


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
