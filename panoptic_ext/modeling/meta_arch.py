"""``PanopticFPNExt``: Panoptic FPN as a detectron2 ``GeneralizedRCNN`` with pluggable parts."""

import logging
from typing import Dict, List, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_sem_seg_head
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from ..compat import pad_to_backbone
from .loss_weights import LossWeightSchedule, build_loss_weight_schedule
from .panoptic_postprocessor import build_panoptic_postprocessor

__all__ = ["PanopticFPNExt"]

logger = logging.getLogger(__name__)


# The detector losses that detectron2's PanopticFPN multiplies by INSTANCE_LOSS_WEIGHT (through
# box_predictor.loss_weight = {"loss_box_reg": ...} and mask_head.loss_weight, v0.6 and main).
INSTANCE_WEIGHTED_LOSSES = ("loss_box_reg", "loss_mask")


def _times(x, weight):
    """``x * weight``, leaving ``x`` itself where the weight is the float 1.0 (detectron2 does not
    multiply by 1, so its losses stay bit-identical)."""
    if isinstance(weight, float) and weight == 1.0:
        return x
    return x * weight


@META_ARCH_REGISTRY.register()
class PanopticFPNExt(GeneralizedRCNN):
    """
    :paper:`PanopticFPN`: a Mask R-CNN (backbone, proposal generator, ROI heads) plus a semantic
    segmentation head on the FPN features, trained with
    ``lambda_i * (instance losses) + lambda_s * (semantic loss)`` (+ RPN losses) and fused into
    a panoptic segmentation at inference.

    The semantic head (``SEM_SEG_HEADS_REGISTRY``), the loss-weight schedule
    (``LOSS_WEIGHT_SCHEDULE_REGISTRY``) and the panoptic post-processor
    (``PANOPTIC_POSTPROCESSOR_REGISTRY``) are plugins; every module is the one the config names.
    With detectron2's PanopticFPN settings the model has its parameters and returns its losses
    and outputs.
    """

    @configurable
    def __init__(
        self,
        *,
        sem_seg_head: nn.Module,
        loss_weight_schedule: LossWeightSchedule,
        postprocessor,
        instance_loss_weight: float = 1.0,
        instance_loss_factor: float = 1.0,
        semantic_loss_factor: float = 1.0,
        scale_rpn_losses: bool = False,
        **kwargs,
    ):
        """
        Args:
            sem_seg_head (nn.Module): semantic head with ``forward(features, targets)``,
                ``layers(features)`` (logits at 1/``common_stride``), ``common_stride`` and
                ``ignore_value``, like detectron2's ``SemSegFPNHead``.
            loss_weight_schedule (LossWeightSchedule): the factors on lambda_i and lambda_s per
                iteration.
            postprocessor: a panoptic post-processor (see ``PANOPTIC_POSTPROCESSOR_REGISTRY``).
            instance_loss_weight (float): detectron2's ``MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT``,
                applied as detectron2 applies it: to the losses in
                :data:`INSTANCE_WEIGHTED_LOSSES` (detectron2 scales the ROI heads' loss-weight
                entries, which hold box regression and mask but not classification).
            instance_loss_factor (float): multiplies all box, mask (and with ``scale_rpn_losses``
                RPN) losses; 1.0 but for configs that still set the deprecated lambda_i key.
            semantic_loss_factor (float): multiplies the semantic head's loss, which already
                holds lambda_s (the head's ``loss_weight``, ``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT``);
                1.0 but for configs that still set the deprecated lambda_s key.
            scale_rpn_losses (bool): multiply the RPN losses by lambda_i too.
            kwargs: the arguments of :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        for attr in ("layers", "common_stride", "ignore_value"):
            if not hasattr(sem_seg_head, attr):
                raise ValueError(
                    f"PanopticFPNExt needs a semantic head with `{attr}` (as detectron2's "
                    f"SemSegFPNHead); {type(sem_seg_head).__name__} has none"
                )
        self.sem_seg_head = sem_seg_head
        self.loss_weight_schedule = loss_weight_schedule
        self.postprocessor = postprocessor
        self.instance_loss_weight = float(instance_loss_weight)
        self.instance_loss_factor = float(instance_loss_factor)
        self.semantic_loss_factor = float(semantic_loss_factor)
        self.scale_rpn_losses = scale_rpn_losses

    @classmethod
    def from_config(cls, cfg) -> dict:
        ret = super().from_config(cfg)
        ret["sem_seg_head"] = build_sem_seg_head(cfg, ret["backbone"].output_shape())
        ret["loss_weight_schedule"] = build_loss_weight_schedule(cfg)
        ret["postprocessor"] = build_panoptic_postprocessor(cfg)
        ret["scale_rpn_losses"] = cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.SCALE_RPN
        ret["instance_loss_weight"] = cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT
        # The deprecated keys keep the model they gave: they multiplied every detector loss and
        # the semantic loss (times SEM_SEG_HEAD.LOSS_WEIGHT, which the head applies).
        old = cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS
        for key, new_key, arg in (
            ("INSTANCE", "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT", "instance_loss_factor"),
            ("SEMANTIC", "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", "semantic_loss_factor"),
        ):
            if old.get(key) is not None:
                logger.warning(
                    "Config key MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.%s is deprecated: use %s",
                    key,
                    new_key,
                )
                ret[arg] = float(old[key])
        return ret

    def forward(self, batched_inputs: List[Dict]) -> Union[Dict[str, torch.Tensor], List[Dict]]:
        """
        Args:
            batched_inputs (list[dict]): detectron2's model inputs; training needs "image",
                "instances" and "sem_seg" (H, W int64 labels, ``ignore_value`` = void).

        Returns:
            In training, the weighted losses (``loss_*`` scalars). In inference, a dict per image:
            "panoptic_seg" (panoptic_seg, segments_info), and "sem_seg" (C, H, W logits) and
            "instances" (Instances) when configured (``MODEL.PANOPTIC_EXT.POSTPROCESS``).
        """
        if not self.training:
            return self.inference(batched_inputs)
        if "sem_seg" not in batched_inputs[0]:
            raise ValueError("PanopticFPNExt training inputs need a 'sem_seg' label map")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)

        gt_sem_seg = [x["sem_seg"].to(self.device) for x in batched_inputs]
        gt_sem_seg = pad_to_backbone(gt_sem_seg, self.backbone, self.sem_seg_head.ignore_value)
        _, sem_seg_losses = self.sem_seg_head(features, gt_sem_seg.tensor)

        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)
        return self.weigh_losses(sem_seg_losses, proposal_losses, detector_losses)

    def weigh_losses(
        self,
        sem_seg_losses: Dict[str, torch.Tensor],
        proposal_losses: Dict[str, torch.Tensor],
        detector_losses: Dict[str, torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """
        Weigh the losses as detectron2's PanopticFPN does (the semantic head applies lambda_s,
        the box and mask losses get lambda_i, the RPN's none), times the schedule's factors;
        record the lambdas in force in the EventStorage.
        """
        storage = get_event_storage()
        factors = self.loss_weight_schedule(storage.iter)
        semantic = _times(factors.semantic, self.semantic_loss_factor)
        factor_i = _times(factors.instance, self.instance_loss_factor)
        instance = _times(factor_i, self.instance_loss_weight)
        lambda_s = _times(semantic, getattr(self.sem_seg_head, "loss_weight", 1.0))
        storage.put_scalar("lambda_instance", float(torch.as_tensor(instance).detach()))
        storage.put_scalar("lambda_semantic", float(torch.as_tensor(lambda_s).detach()))
        rpn_weight = instance if self.scale_rpn_losses else 1.0
        losses = {k: _times(v, semantic) for k, v in sem_seg_losses.items()}
        losses.update({k: _times(v, rpn_weight) for k, v in proposal_losses.items()})
        for k, v in detector_losses.items():
            weight = instance if k in INSTANCE_WEIGHTED_LOSSES else factor_i
            losses[k] = _times(v, weight)
        losses.update(self.loss_weight_schedule.extra_losses())
        return losses

    def inference(
        self, batched_inputs: List[Dict], do_postprocess: bool = True
    ) -> Union[List[Dict], Tuple[List[Instances], List[torch.Tensor]]]:
        """
        Args:
            batched_inputs (list[dict]): as in :meth:`forward`; optional "height" / "width" give
                the output size.
            do_postprocess (bool): post-process (as detectron2's PanopticFPN.inference).

        Returns:
            With post-processing, see :meth:`forward`; without, (raw detector Instances, raw
            semantic logits at the padded input size), as detectron2.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, _ = self.proposal_generator(images, features, None)
        detector_results, _ = self.roi_heads(images, features, proposals, None)
        if not do_postprocess:
            sem_seg_results, _ = self.sem_seg_head(features, None)
            return detector_results, sem_seg_results

        sem_seg_logits = self.sem_seg_head.layers(features)  # at 1/common_stride
        results = []
        for logits, instances, inputs, image_size in zip(
            sem_seg_logits, detector_results, batched_inputs, images.image_sizes
        ):
            results.append(
                self.postprocessor(
                    logits,
                    instances,
                    stride=self.sem_seg_head.common_stride,
                    image_size=image_size,
                    output_size=(
                        inputs.get("height", image_size[0]),
                        inputs.get("width", image_size[1]),
                    ),
                )
            )
        return results
