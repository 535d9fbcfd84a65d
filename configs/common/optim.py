# Optimizers with the project's parameter groups (detectron2's per-parameter settings; no weight
# decay on loss-weight schedule parameters) and gradient clipping: SOLVER.* and
# SOLVER.OPTIMIZER / SOLVER.BETAS of the YAML configs. `params.model` is set by the trainer.
from detectron2.config import LazyCall as L

from panoptic_ext.apps.train.solver import panoptic_optimizer, panoptic_param_groups

SGD = L(panoptic_optimizer)(
    params=L(panoptic_param_groups)(
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        weight_decay_norm=0.0,
        bias_lr_factor=1.0,
        weight_decay_bias=None,  # None: weight_decay
    ),
    name="SGD",
    lr=0.02,
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    # clip_type: "value", "norm" (per parameter, detectron2) or "full_model" (joint norm)
    clip_gradients=dict(enabled=False, clip_type="value", clip_value=1.0, norm_type=2.0),
)

AdamW = L(panoptic_optimizer)(
    params=L(panoptic_param_groups)(
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        weight_decay_norm=0.0,
        bias_lr_factor=1.0,
        weight_decay_bias=None,
    ),
    name="AdamW",
    lr=1e-3,
    betas=(0.9, 0.999),
    weight_decay=0.05,
    clip_gradients=dict(enabled=False, clip_type="value", clip_value=1.0, norm_type=2.0),
)
