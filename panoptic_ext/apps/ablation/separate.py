"""
Joint vs separate networks (:paper:`PanopticFPN`, Table 3a): a Mask R-CNN alone and a semantic
FPN alone, each with its own backbone, whose outputs the project's panoptic post-processor fuses
as it fuses the joint model's branches.
"""

from typing import Dict, List

import torch
from detectron2.config import CfgNode
from torch import nn

from panoptic_ext.compat import pad_to_backbone

__all__ = ["SeparateNetworksPanoptic", "separate_network_configs", "NETWORK_KINDS"]

# How a sweep point is trained: one Panoptic FPN, or a Mask R-CNN + a semantic FPN.
NETWORK_KINDS = ("joint", "separate")


def separate_network_configs(cfg: CfgNode) -> Dict[str, CfgNode]:
    """
    The two networks of a joint Panoptic FPN config, same backbone, heads, data and solver:

    - "instance": detectron2's ``GeneralizedRCNN`` with its ``StandardROIHeads`` (Mask R-CNN);
    - "semantic": detectron2's ``SemanticSegmentor`` with ``cfg``'s semantic head
      (``SemanticFPNHead``), trained on the same semantic targets (``SEM_SEG_THINGS`` layout).

    Each is trained without evaluation (no ``DATASETS.TEST``: detectron2 would evaluate after the
    last iteration whatever ``TEST.EVAL_PERIOD`` says): what they predict is evaluated once fused
    (:class:`SeparateNetworksPanoptic`).
    """
    ret = {}
    for kind, overrides in (
        ("instance", {"META_ARCHITECTURE": "GeneralizedRCNN"}),
        ("semantic", {"META_ARCHITECTURE": "SemanticSegmentor"}),
    ):
        sub = cfg.clone()
        sub.defrost()
        sub.MODEL.META_ARCHITECTURE = overrides["META_ARCHITECTURE"]
        if kind == "instance":
            sub.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
        sub.DATASETS.TEST = ()
        sub.freeze()
        ret[kind] = sub
    return ret


def _preprocess(model: nn.Module, batched_inputs: List[Dict]):
    """Normalized, padded images, as ``GeneralizedRCNN.preprocess_image`` makes them."""
    images = [
        (x["image"].to(model.pixel_mean.device) - model.pixel_mean) / model.pixel_std
        for x in batched_inputs
    ]
    return pad_to_backbone(images, model.backbone)


class SeparateNetworksPanoptic(nn.Module):
    """
    Inference of two separately trained networks fused into Panoptic FPN's outputs: the raw
    detections of ``instance_model`` and the 1/``common_stride`` semantic logits of
    ``semantic_model`` go to ``postprocessor`` (a ``PANOPTIC_POSTPROCESSOR_REGISTRY`` object),
    exactly as ``PanopticFPNExt.inference`` passes its own two branches' outputs. Returns, per
    image, the joint model's dict ("panoptic_seg", and "sem_seg" / "instances" as configured), so
    the project's evaluators score it as they score the joint model.
    """

    def __init__(self, instance_model: nn.Module, semantic_model: nn.Module, postprocessor):
        """
        Args:
            instance_model (nn.Module): a ``GeneralizedRCNN`` with masks (Mask R-CNN).
            semantic_model (nn.Module): a ``SemanticSegmentor`` whose ``sem_seg_head`` has
                ``layers(features)`` and ``common_stride`` (``SemSegFPNHead``, ``SemanticFPNHead``).
            postprocessor: called as ``postprocessor(logits, instances, stride=, image_size=,
                output_size=)``.
        """
        super().__init__()
        for attr in ("layers", "common_stride"):
            if not hasattr(semantic_model.sem_seg_head, attr):
                raise ValueError(
                    f"the semantic network's head ({type(semantic_model.sem_seg_head).__name__}) "
                    f"has no `{attr}`; SeparateNetworksPanoptic needs an FPN semantic head"
                )
        self.instance_model = instance_model
        self.semantic_model = semantic_model
        self.postprocessor = postprocessor
        self.eval()  # puts both networks in eval mode: this module only predicts

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        if self.training:
            raise RuntimeError(
                "SeparateNetworksPanoptic only predicts: train its two networks on their own"
            )
        detections = self.instance_model.inference(batched_inputs, do_postprocess=False)
        images = _preprocess(self.semantic_model, batched_inputs)
        head = self.semantic_model.sem_seg_head
        with torch.no_grad():
            logits = head.layers(self.semantic_model.backbone(images.tensor))
        results = []
        for sem_logits, instances, inputs, image_size in zip(
            logits, detections, batched_inputs, images.image_sizes
        ):
            output_size = (inputs.get("height", image_size[0]), inputs.get("width", image_size[1]))
            results.append(
                self.postprocessor(
                    sem_logits,
                    instances,
                    stride=head.common_stride,
                    image_size=image_size,
                    output_size=output_size,
                )
            )
        return results
