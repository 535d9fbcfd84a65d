# Panoptic FPN R50-FPN as a Python config: detectron2's model-zoo common/models/panoptic_fpn.py
# (its Mask R-CNN FPN with SemSegFPNHead: the model of Base-Panoptic-FPN.yaml) with panoptic_ext's
# meta-architecture, ROI heads, semantic head, loss-weight schedule and post-processor. The
# channels of the heads follow backbone.out_channels. lambda_i is instance_loss_weight, lambda_s
# sem_seg_head.loss_weight (0.5), as in detectron2.
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.layers import ShapeSpec

from panoptic_ext.apps.train.lazy_config import output_ids
from panoptic_ext.compat import model_zoo_config_file
from panoptic_ext.modeling import (
    FastPanopticPostprocessor,
    PanopticFPNExt,
    PanopticROIHeads,
    SemanticFPNHead,
)
from panoptic_ext.modeling.loss_weights import ConstantLossWeights

model = LazyConfig.load(model_zoo_config_file("common/models/panoptic_fpn.py")).model
model._target_ = PanopticFPNExt
model.backbone.bottom_up.freeze_at = 2  # MODEL.BACKBONE.FREEZE_AT, as detectron2's R50 configs
model.instance_loss_weight = 1.0
model.scale_rpn_losses = False
model.loss_weight_schedule = L(ConstantLossWeights)()  # factors on lambda_i, lambda_s: 1
model.postprocessor = L(FastPanopticPostprocessor)(
    overlap_threshold=0.5,
    stuff_area_threshold=4096,
    instance_score_threshold=0.5,
    sem_seg_things="merged",
    num_thing_classes="${..roi_heads.num_classes}",
    return_sem_seg=True,
    return_instances=True,
    thing_ids=None,  # None: detectron2's label space; see use_test_label_space
    stuff_ids=None,
)

channels = "${....backbone.out_channels}"
model.proposal_generator.head.in_channels = "${...backbone.out_channels}"
model.proposal_generator.anchor_boundary_thresh = -1  # as MODEL.RPN.BOUNDARY_THRESH (an int)
heads = model.roi_heads
heads._target_ = PanopticROIHeads
# None: masks for every detection (the model returns "instances"); otherwise the
# post-processor's instance_score_threshold
heads.mask_score_threshold = None
heads.box_head.input_shape = L(ShapeSpec)(channels=channels, height=7, width=7)
heads.box_predictor.input_shape = L(ShapeSpec)(channels=1024)  # the box head's last fc_dims
heads.mask_head.input_shape = L(ShapeSpec)(channels=channels, width=14, height=14)

model.sem_seg_head._target_ = SemanticFPNHead
model.sem_seg_head.input_shape = L("builtins.dict")(  # real ShapeSpecs, not a config node
    **{
        f: L(ShapeSpec)(stride=s, channels=channels)
        for f, s in zip(["p2", "p3", "p4", "p5"], [4, 8, 16, 32])
    }
)
model.sem_seg_head.loss_on = "upsampled"


def use_test_label_space(model):
    """Outputs in the label space of the test dataset (dataloader.test.dataset.names), as the
    YAML path does with MODEL.PANOPTIC_EXT.POSTPROCESS.CATEGORY_IDS "dataset"."""
    for kind in ("thing", "stuff"):
        model.postprocessor[f"{kind}_ids"] = L(output_ids)(
            dataset_name="${dataloader.test.dataset.names}",
            sem_seg_things="${model.postprocessor.sem_seg_things}",
            kind=kind,
        )
