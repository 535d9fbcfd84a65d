"""Compute of a model: fvcore FLOPs of its raw inference on one image, and its parameters."""

import logging
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from panoptic_ext.compat import pad_to_backbone

__all__ = ["RawInference", "count_compute"]

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
    and the semantic head's output, for whichever of the branches the model has
    (``GeneralizedRCNN``, ``SemanticSegmentor``, Panoptic FPN).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        m = self.model
        # GeneralizedRCNN.preprocess_image (SemanticSegmentor has none in detectron2 v0.6)
        normalized = (image.to(m.pixel_mean.device) - m.pixel_mean) / m.pixel_std
        images = pad_to_backbone([normalized], m.backbone)
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


def count_compute(model: nn.Module, image: torch.Tensor) -> Dict[str, Any]:
    """
    FLOPs of ``model``'s inference on one image (fvcore ``FlopCountAnalysis``, one multiply-add
    counted as one flop; backbone + FPN, RPN, ROI heads on the proposals and detections, semantic
    head; no post-processing) and its parameters.

    Args:
        model (nn.Module): a detectron2 model (put in eval mode).
        image (Tensor): (3, H, W) input image, as the model's "image" input.

    Returns:
        dict: "gflops", "parts" (GFLOPs per top-level module), "params_m" (millions),
        "detections" (how many the ROI heads kept, 0 without them).
    """
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
    try:
        with torch.no_grad():
            total = analysis.total()
            by_module = analysis.by_module()
    finally:
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
