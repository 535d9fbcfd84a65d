# Panoptic FPN R50-FPN as a Python config: the model of
# configs/COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml (detectron2's Base-RCNN-FPN +
# Base-Panoptic-FPN with panoptic_ext's meta-architecture, ROI heads, semantic head, loss-weight
# schedule and post-processor), every argument written out.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
)

from panoptic_ext.data.label_space import output_stuff_ids, output_thing_ids
from panoptic_ext.modeling import (
    FastPanopticPostprocessor,
    PanopticFPNExt,
    PanopticROIHeads,
    SemanticFPNHead,
)
from panoptic_ext.modeling.loss_weights import ConstantLossWeights

_FPN_LEVELS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}

model = L(PanopticFPNExt)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res2", "res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        norm="",
        top_block=L(LastLevelMaxPool)(),
        fuse_type="sum",
    ),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels="${...backbone.out_channels}", num_anchors=3),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(
            thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True
        ),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),  # (training, inference), per FPN level
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
        anchor_boundary_thresh=-1,
    ),
    roi_heads=L(PanopticROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(
            thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False
        ),
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=L(ROIPooler)(
            output_size=7,
            scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        ),
        box_head=L(FastRCNNConvFCHead)(
            input_shape=L(ShapeSpec)(
                channels="${....backbone.out_channels}", height=7, width=7
            ),
            conv_dims=[],
            fc_dims=[1024, 1024],
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=L(ShapeSpec)(channels=1024),  # the box head's last fc_dims
            test_score_thresh=0.05,
            test_nms_thresh=0.5,
            test_topk_per_image=100,
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
        ),
        mask_in_features=["p2", "p3", "p4", "p5"],
        mask_pooler=L(ROIPooler)(
            output_size=14,
            scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        ),
        mask_head=L(MaskRCNNConvUpsampleHead)(
            input_shape=L(ShapeSpec)(
                channels="${....backbone.out_channels}", width=14, height=14
            ),
            num_classes="${..num_classes}",
            conv_dims=[256, 256, 256, 256, 256],  # 4 convs + the deconvolution
        ),
        # None: masks for every detection (the model returns "instances"); otherwise the
        # post-processor's instance_score_threshold
        mask_score_threshold=None,
    ),
    sem_seg_head=L(SemanticFPNHead)(
        input_shape=L("builtins.dict")(  # real ShapeSpecs (a plain dict node stays a config)
            **{
                f: L(ShapeSpec)(stride=s, channels="${....backbone.out_channels}")
                for f, s in _FPN_LEVELS.items()
            }
        ),
        num_classes=54,  # 53 COCO stuff classes + 'things' (sem_seg_things "merged")
        conv_dims=128,
        common_stride=4,
        loss_weight=1.0,  # lambda_s is the loss-weight schedule's
        norm="GN",
        ignore_value=255,
        loss_on="upsampled",
    ),
    loss_weight_schedule=L(ConstantLossWeights)(instance=1.0, semantic=0.5),
    postprocessor=L(FastPanopticPostprocessor)(
        overlap_threshold=0.5,
        stuff_area_threshold=4096,
        instance_score_threshold=0.5,
        sem_seg_things="merged",
        num_thing_classes="${..roi_heads.num_classes}",
        return_sem_seg=True,
        return_instances=True,
        thing_ids=None,  # None: detectron2's label space; see use_test_label_space
        stuff_ids=None,
    ),
    scale_rpn_losses=False,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)


def use_test_label_space(model):
    """Outputs in the label space of the test dataset (dataloader.test.dataset.names), as the
    YAML path does with DATASETS.TEST[0]."""
    for name, fn in (("thing_ids", output_thing_ids), ("stuff_ids", output_stuff_ids)):
        model.postprocessor[name] = L(fn)(
            dataset_name="${dataloader.test.dataset.names}",
            sem_seg_things="${model.postprocessor.sem_seg_things}",
        )
