# Panoptic FPN, ResNet-50, 1x schedule (90k iterations at batch 16): the Python twin of
# panoptic_fpn_R_50_1x.yaml (same model, data, optimizer and schedule).
from ..common.data.panoptic import dataloader
from ..common.models.panoptic_fpn import model, use_test_label_space
from ..common.optim import SGD as optimizer
from ..common.schedules import lr_multiplier_1x as lr_multiplier
from ..common.train import train

use_test_label_space(model)
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
