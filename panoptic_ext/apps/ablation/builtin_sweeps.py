"""
The paper's ablations as sweep specs (:paper:`PanopticFPN`), in the format of a sweep YAML file
(see :mod:`panoptic_ext.apps.ablation.spec`). Points that leave the config unchanged are the
baseline run, shared by every sweep.
"""

from typing import Any, Dict, List

__all__ = ["BUILTIN_SWEEPS", "BUILTIN_GROUPS"]

_LW = "MODEL.PANOPTIC_EXT.LOSS_WEIGHTS"  # the schedule of factors on lambda_i, lambda_s
_LAMBDA_I = "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT"
_LAMBDA_S = "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT"

BUILTIN_SWEEPS: Dict[str, Dict[str, Any]] = {
    "lambda_s": {
        "description": "Table 2: semantic loss weight lambda_s with lambda_i = 1 "
        "(0 trains the instance branch alone)",
        "axis": "lambda_s",
        "overrides": [f"{_LAMBDA_I}=1.0"],
        "sweep": [f"{_LAMBDA_S}=0.0,0.25,0.5,1.0"],
    },
    "lambda_i": {
        "description": "Table 2: instance loss weight lambda_i with lambda_s = 1 (0 trains the "
        "semantic branch alone: the RPN losses are scaled by lambda_i there too)",
        "axis": "lambda_i",
        "overrides": [f"{_LAMBDA_S}=1.0"],
        "points": [
            {
                "name": "0",
                "value": 0.0,
                "overrides": [f"{_LAMBDA_I}=0.0", f"{_LW}.SCALE_RPN=true"],
            },
            {"name": "0.25", "value": 0.25, "overrides": [f"{_LAMBDA_I}=0.25"]},
            {"name": "0.5", "value": 0.5, "overrides": [f"{_LAMBDA_I}=0.5"]},
            {"name": "1.0", "value": 1.0, "overrides": [f"{_LAMBDA_I}=1.0"]},
        ],
    },
    "sem_seg_things": {
        "description": "semantic branch over stuff + one merged 'things' class vs over every "
        "thing class (MODEL.SEM_SEG_HEAD.NUM_CLASSES follows from the dataset)",
        "axis": "semantic classes",
        "points": [
            {"name": "merged", "overrides": ["MODEL.PANOPTIC_EXT.SEM_SEG_THINGS=merged"]},
            {"name": "all", "overrides": ["MODEL.PANOPTIC_EXT.SEM_SEG_THINGS=all"]},
        ],
    },
    "losses": {
        "description": "Table 3c: both losses in every minibatch vs one loss per minibatch, "
        "alternating (the RPN losses go with the instance losses)",
        "axis": "losses per minibatch",
        "points": [
            {"name": "combined"},
            {
                "name": "alternating",
                "overrides": [f"{_LW}.NAME=alternating", f"{_LW}.SCALE_RPN=true"],
            },
        ],
    },
    "networks": {
        "description": "Table 3a: one joint network vs a Mask R-CNN + a semantic FPN, each with "
        "its own backbone, fused by the same post-processor",
        "axis": "networks",
        "points": [{"name": "joint"}, {"name": "separate", "networks": "separate"}],
    },
    "seeds": {
        "description": "the baseline with 3 seeds (SEED, SEED + 1, SEED + 2): the noise",
        "axis": "seed",
        "points": [{"name": "baseline"}],
        "repeat": 3,
    },
}

# Names that stand for several sweeps.
BUILTIN_GROUPS: Dict[str, List[str]] = {
    "paper": ["lambda_s", "lambda_i", "sem_seg_things", "losses", "networks", "seeds"],
}
