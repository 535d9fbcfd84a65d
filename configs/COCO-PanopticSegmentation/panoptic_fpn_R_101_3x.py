# Panoptic FPN, ResNet-101, 3x schedule: the Python twin of panoptic_fpn_R_101_3x.yaml.
from ..common.data.panoptic import dataloader
from ..common.models.panoptic_fpn import model, use_test_label_space
from ..common.optim import SGD as optimizer
from ..common.schedules import lr_multiplier_3x as lr_multiplier
from ..common.train import train

use_test_label_space(model)
model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.max_iter = 270000
