# A few iterations of a tiny Panoptic FPN on the synthetic data, for tests and smoke runs: the
# Python twin of panoptic_fpn_R_18_synthetic_instant_test.yaml (tests point
# dataloader.{train,test}.dataset.names at a tiny split).
from detectron2.config import LazyConfig

model, dataloader, optimizer, lr_multiplier, train = LazyConfig.load_rel(
    "../Synthetic-PanopticSegmentation/panoptic_fpn_R_18_scratch_cpu.py",
    ("model", "dataloader", "optimizer", "lr_multiplier", "train"),
)

model.backbone.out_channels = 32
model.proposal_generator.pre_nms_topk = (100, 100)
model.proposal_generator.post_nms_topk = (50, 50)
model.roi_heads.batch_size_per_image = 32
model.roi_heads.box_head.fc_dims = [64, 64]
model.roi_heads.box_predictor.input_shape.channels = 64
model.roi_heads.mask_head.conv_dims = [32, 32]  # 1 conv + the deconvolution
model.sem_seg_head.conv_dims = 32

dataloader.train.mapper.augmentations[0].short_edge_length = (64,)
dataloader.train.mapper.augmentations[0].max_size = 64
dataloader.test.mapper.augmentations[0].short_edge_length = 64
dataloader.test.mapper.augmentations[0].max_size = 64
dataloader.train.total_batch_size = 2

lr_multiplier.warmup_iters = 2
train.max_iter = 4
train.checkpointer.period = 2
train.eval_period = 2
train.output_dir = "output/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test"
