# The main job's recipe as a Python config, twin of panoptic_fpn_R_18_scratch_cpu.yaml: a ResNet-18
# Panoptic FPN (trainable BN, 64-channel FPN and heads) trained from scratch on the CPU on the
# synthetic dataset (3 thing, 3 stuff classes, 256x256): AdamW, 50-iteration warm-up, cosine LR,
# whole-model gradient clipping at 1.0, 300 iterations, batch 4, seed 42.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from ..common.data.panoptic import dataloader
from ..common.models.panoptic_fpn import model, use_test_label_space
from ..common.optim import AdamW as optimizer
from ..common.schedules import cosine
from ..common.train import train

use_test_label_space(model)
bottom_up = model.backbone.bottom_up
bottom_up.stem.norm = "BN"
bottom_up.stages = L(bottom_up.stages._target_)(depth=18, norm="BN")  # BasicBlocks
bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (600, 300)
model.proposal_generator.post_nms_topk = (300, 150)
model.roi_heads.num_classes = 3
model.roi_heads.batch_size_per_image = 128
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape.channels = 256
model.roi_heads.mask_head.conv_dims = [64, 64, 64]  # 2 convs + the deconvolution
model.sem_seg_head.num_classes = 4  # 'things' + 3 stuff classes
model.sem_seg_head.conv_dims = 64
model.postprocessor.stuff_area_threshold = 400  # COCO's 4096 px scaled to 256x256 images

dataloader.train.dataset.names = "panoptic_synthetic_train"
dataloader.test.dataset.names = "panoptic_synthetic_val"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(256,), max_size=256, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True, vertical=False),
]
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=256, max_size=256, sample_style="choice")
]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0  # loading in the main process: --resume repeats a run exactly
dataloader.test.num_workers = 0

optimizer.lr = 0.001
optimizer.weight_decay = 0.05
optimizer.clip_gradients = dict(
    enabled=True, clip_type="full_model", clip_value=1.0, norm_type=2.0
)
lr_multiplier = cosine(warmup_iters=50, warmup_factor=0.01)

train.init_checkpoint = ""  # from scratch
train.max_iter = 300
train.checkpointer.period = 100
train.eval_period = 100
train.device = "cpu"
train.seed = 42
train.output_dir = "output/main_job"
