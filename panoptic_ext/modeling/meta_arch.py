"""``PanopticFPNExt``: Panoptic FPN as a detectron2 ``GeneralizedRCNN`` with pluggable parts."""

import functools
import logging
from typing import Dict, List, Mapping, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_sem_seg_head
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from .deferred_masks import DeferredMasks, supports_deferred_masks
from .fast_backbone import use_fast_backbone
from .inplace_layers import use_inplace_conv_layers
from .loss_weights import LossWeightSchedule, build_loss_weight_schedule
from .parallel_pooler import parallelize_roi_poolers
from .postprocessors import build_panoptic_postprocessor

__all__ = ["PanopticFPNExt"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class PanopticFPNExt(GeneralizedRCNN):
    """
    :paper:`PanopticFPN`: a Mask R-CNN (backbone, proposal generator, ROI heads) plus a semantic
    segmentation head on the FPN features, trained with
    ``lambda_i * (instance losses) + lambda_s * (semantic loss)`` (+ RPN losses) and fused into
    a panoptic segmentation at inference.

    The semantic head (``SEM_SEG_HEADS_REGISTRY``), the loss-weight schedule
    (``LOSS_WEIGHT_SCHEDULE_REGISTRY``) and the panoptic post-processor
    (``PANOPTIC_POSTPROCESSOR_REGISTRY``) are plugins. With the default settings the model has
    detectron2's ``PanopticFPN`` parameters and returns its losses and outputs.
    """

    @configurable
    def __init__(
        self,
        *,
        sem_seg_head: nn.Module,
        loss_weight_schedule: LossWeightSchedule,
        postprocessor,
        scale_rpn_losses: bool = False,
        defer_masks: bool = True,
        parallel_roi_align: bool = True,
        inplace_conv_layers: bool = True,
        fast_backbone: bool = True,
        **kwargs,
    ):
        """
        Args:
            sem_seg_head (nn.Module): semantic head with ``forward(features, targets)``,
                ``layers(features)`` (logits at 1/``common_stride``), ``common_stride`` and
                ``ignore_value``, like detectron2's ``SemSegFPNHead``.
            loss_weight_schedule (LossWeightSchedule): gives lambda_i and lambda_s per iteration.
            postprocessor: a panoptic post-processor (see ``PANOPTIC_POSTPROCESSOR_REGISTRY``).
            scale_rpn_losses (bool): multiply the RPN losses by lambda_i too.
            defer_masks (bool): at inference, predict first only the masks the panoptic output
                needs (the post-processor's ``needed_instances``) and the others when
                "instances" is read (:class:`DeferredMasks`); the outputs are the same.
            parallel_roi_align (bool): at inference, pool the ROIs of each feature level in
                parallel threads (:func:`parallelize_roi_poolers`); the outputs are the same.
            inplace_conv_layers (bool): compute the frozen batch norms and ReLUs of the
                convolutions in place when autograd is not involved
                (:func:`use_inplace_conv_layers`); the outputs are the same.
            fast_backbone (bool): the ResNet stem's max pooling without indices and the FPN
                top-down sums in place when autograd is not involved
                (:func:`use_fast_backbone`); the outputs are the same.
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
        self.scale_rpn_losses = scale_rpn_losses
        self.defer_masks = defer_masks
        if parallel_roi_align and self.roi_heads is not None:
            parallelize_roi_poolers(self.roi_heads)
        if inplace_conv_layers:
            use_inplace_conv_layers(self)
        if fast_backbone:
            use_fast_backbone(self.backbone)

    @classmethod
    def from_config(cls, cfg) -> dict:
        ret = super().from_config(cfg)
        ret["sem_seg_head"] = build_sem_seg_head(cfg, ret["backbone"].output_shape())
        ret["loss_weight_schedule"] = build_loss_weight_schedule(cfg)
        ret["postprocessor"] = build_panoptic_postprocessor(cfg)
        ret["scale_rpn_losses"] = cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.SCALE_RPN
        speedups = cfg.MODEL.PANOPTIC_EXT.INFERENCE
        ret["defer_masks"] = speedups.DEFER_MASKS
        ret["parallel_roi_align"] = speedups.PARALLEL_ROI_ALIGN
        ret["inplace_conv_layers"] = speedups.INPLACE_CONV_LAYERS
        ret["fast_backbone"] = speedups.FAST_BACKBONE
        if cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT != 1.0:
            logger.warning(
                "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT=%s multiplies lambda_s "
                "(MODEL.PANOPTIC_EXT.LOSS_WEIGHTS); set it to 1.0 to use lambda_s alone.",
                cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            )
        if cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT != 1.0:
            logger.warning(
                "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT is ignored by PanopticFPNExt; use "
                "MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.INSTANCE."
            )
        return ret

    def forward(self, batched_inputs: List[Dict]) -> Union[Dict[str, torch.Tensor], List[Mapping]]:
        """
        Args:
            batched_inputs (list[dict]): detectron2's model inputs; training needs "image",
                "instances" and "sem_seg" (H, W int64 labels, ``ignore_value`` = void).

        Returns:
            In training, the weighted losses (``loss_*`` scalars). In inference, per image the
            post-processor's outputs: "panoptic_seg" (panoptic_seg, segments_info), and
            "sem_seg" (C, H, W logits), "instances" (Instances) unless disabled.
        """
        if not self.training:
            return self.inference(batched_inputs)
        if "sem_seg" not in batched_inputs[0]:
            raise ValueError("PanopticFPNExt training inputs need a 'sem_seg' label map")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)

        gt_sem_seg = [x["sem_seg"].to(self.device) for x in batched_inputs]
        gt_sem_seg = ImageList.from_tensors(
            gt_sem_seg, self.backbone.size_divisibility, self.sem_seg_head.ignore_value
        ).tensor
        _, sem_seg_losses = self.sem_seg_head(features, gt_sem_seg)

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
        """Apply the schedule's lambda_i / lambda_s and record them in the EventStorage."""
        storage = get_event_storage()
        weights = self.loss_weight_schedule(storage.iter)
        storage.put_scalar("lambda_instance", float(torch.as_tensor(weights.instance).detach()))
        storage.put_scalar("lambda_semantic", float(torch.as_tensor(weights.semantic).detach()))
        rpn_weight = weights.instance if self.scale_rpn_losses else 1.0
        losses = {k: v * weights.semantic for k, v in sem_seg_losses.items()}
        losses.update({k: v * rpn_weight for k, v in proposal_losses.items()})
        losses.update({k: v * weights.instance for k, v in detector_losses.items()})
        losses.update(self.loss_weight_schedule.extra_losses())
        return losses

    def inference(
        self, batched_inputs: List[Dict], do_postprocess: bool = True
    ) -> Union[List[Mapping], Tuple[List[Instances], List[torch.Tensor]]]:
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
        if do_postprocess:
            sem_seg_logits = self.sem_seg_head.layers(features)  # 1/common_stride scale
        else:
            sem_seg_logits, _ = self.sem_seg_head(features, None)
        proposals, _ = self.proposal_generator(images, features, None)
        deferred = None
        if do_postprocess and self._can_defer_masks():
            # StandardROIHeads.forward's inference in its two halves (_forward_box, then the
            # mask branch), both in detectron2 v0.6 and main; the masks the panoptic output
            # does not read are predicted when "instances" is read
            detector_results = self.roi_heads._forward_box(features, proposals)
            needed = [self.postprocessor.needed_instances(x) for x in detector_results]
            if all(n is not None for n in needed):
                deferred = DeferredMasks(self.roi_heads, features, detector_results, needed)
            else:
                detector_results = self.roi_heads.forward_with_given_boxes(
                    features, detector_results
                )
        else:
            detector_results, _ = self.roi_heads(images, features, proposals, None)
        if not do_postprocess:
            return detector_results, sem_seg_logits

        results = []
        for i, (logits, instances, inputs, image_size) in enumerate(
            zip(sem_seg_logits, detector_results, batched_inputs, images.image_sizes)
        ):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            kwargs = {}
            if deferred is not None:
                instances = Instances(instances.image_size, **instances.get_fields())
                instances.pred_masks = deferred.partial(i)
                kwargs["complete_masks"] = functools.partial(deferred.complete, i)
            results.append(
                self.postprocessor(
                    logits,
                    instances,
                    stride=self.sem_seg_head.common_stride,
                    image_size=image_size,
                    output_size=(height, width),
                    **kwargs,
                )
            )
        return results

    def _can_defer_masks(self) -> bool:
        """Deferred masks: enabled, supported by the ROI heads, and by the post-processor (it
        says which masks it needs, ``needed_instances``)."""
        return (
            self.defer_masks
            and supports_deferred_masks(self.roi_heads)
            and callable(getattr(self.postprocessor, "needed_instances", None))
        )
