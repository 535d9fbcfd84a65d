# Panoptic FPN R50 on Cityscapes, the paper's setting: the Python twin of
# panoptic_fpn_R_50_cityscapes.yaml (512x1024 crops of images rescaled to a shorter side of
# 512..2048, batch 32, LR 0.01 dropped 10x at 40k and 55k of 65k iterations; 8 thing classes,
# the semantic branch over all 19 train ids).
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from ..common.data.panoptic import dataloader
from ..common.models.panoptic_fpn import model, use_test_label_space
from ..common.optim import SGD as optimizer
from ..common.schedules import multistep
from ..common.train import train

use_test_label_space(model)
model.roi_heads.num_classes = 8
model.sem_seg_head.num_classes = 19  # things 0..7, then stuff 8..18
model.postprocessor.sem_seg_things = "all"

dataloader.train.dataset.names = "cityscapes_fine_panoptic_ext_train"
dataloader.test.dataset.names = "cityscapes_fine_panoptic_ext_val"
dataloader.train.total_batch_size = 32
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(
        short_edge_length=tuple(range(512, 2049, 32)), max_size=4096, sample_style="choice"
    ),
    L(T.RandomCrop)(crop_type="absolute", crop_size=(512, 1024)),
    L(T.RandomFlip)(horizontal=True, vertical=False),
]
dataloader.train.mapper.recompute_boxes = True
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=1024, max_size=2048, sample_style="choice")
]

optimizer.lr = 0.01
lr_multiplier = multistep([40000, 55000])
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.max_iter = 65000
train.eval_period = 5000
