# Panoptic FPN, ResNet-50, 3x schedule (270k iterations at batch 16): the Python twin of
# panoptic_fpn_R_50_3x.yaml.
from ..common.data.panoptic import dataloader
from ..common.models.panoptic_fpn import model, use_test_label_space
from ..common.optim import SGD as optimizer
from ..common.schedules import lr_multiplier_3x as lr_multiplier
from ..common.train import train

use_test_label_space(model)
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.max_iter = 270000
