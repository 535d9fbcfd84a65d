"""The project's config keys: ``add_panoptic_ext_config(cfg)``, and the deprecated key names.

detectron2's keys keep detectron2's meaning: lambda_i is ``MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT``
and lambda_s is ``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT``, exactly as detectron2's ``PanopticFPN`` reads
them; a loss-weight schedule multiplies each by a factor (1.0 for "constant").
"""

import logging
from typing import Any

from detectron2.config import CfgNode as CN

__all__ = ["add_panoptic_ext_config", "DEPRECATED_KEYS", "get_key", "upgrade_deprecated_keys"]

logger = logging.getLogger(__name__)

# Old key -> the key that replaced it. The old keys still merge (default None) and are honoured
# with a warning that names the new key.
DEPRECATED_KEYS = {
    "MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.INSTANCE": "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT",
    "MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.SEMANTIC": "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT",
    "MODEL.PANOPTIC_EXT.SOLVER.OPTIMIZER": "SOLVER.OPTIMIZER",
    "MODEL.PANOPTIC_EXT.SOLVER.BETAS": "SOLVER.BETAS",
    "MODEL.PANOPTIC_EXT.CHECKPOINT.MAX_TO_KEEP": "SOLVER.CHECKPOINT_MAX_TO_KEEP",
    "MODEL.PANOPTIC_EXT.CHECKPOINT.DOWNLOAD_TIMEOUT": "RUN.WEIGHTS_DOWNLOAD_TIMEOUT",
    "MODEL.PANOPTIC_EXT.ALLOW_PARTIAL_WEIGHTS": "RUN.ALLOW_PARTIAL_WEIGHTS",
    "MODEL.PANOPTIC_EXT.EXISTING_OUTPUT": "RUN.EXISTING_OUTPUT",
    "MODEL.PANOPTIC_EXT.EVAL.TASKS": "TEST.EVAL_TASKS",
    "MODEL.PANOPTIC_EXT.EVAL.SAVE_PANOPTIC_PNGS": "TEST.SAVE_PANOPTIC_PNGS",
    "MODEL.PANOPTIC_EXT.DATA.ON_BAD_RECORD": "DATALOADER.ON_BAD_RECORD",
}


def add_panoptic_ext_config(cfg: CN) -> None:
    """
    Add panoptic_ext's keys to a detectron2 config, in place. Idempotent.

    Model keys live under ``cfg.MODEL.PANOPTIC_EXT``; ``MODEL.SEM_SEG_HEAD`` only gains the key
    its head reads; run-management keys extend ``SOLVER``, ``TEST`` and ``DATALOADER`` or live
    under ``RUN`` (train_net.py and the predictor). Defaults reproduce detectron2's PanopticFPN.
    """
    if "PANOPTIC_EXT" in cfg.MODEL:
        return
    _C = cfg

    _C.MODEL.PANOPTIC_EXT = CN()
    # Classes of the semantic branch: "merged" = stuff + one 'things' class (index 0, detectron2's
    # layout, checkpoint compatible); "all" = every thing class (indices 0..T-1, same order as the
    # instance classes) followed by the stuff classes. Thing predictions are folded into one
    # 'things' class at panoptic inference.
    _C.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS = "merged"

    # Loss-weight schedule: lambda_i(t) = MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT * f_i(t) and
    # lambda_s(t) = MODEL.SEM_SEG_HEAD.LOSS_WEIGHT * f_s(t), with factors f from the schedule.
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS = CN()
    # Registered name in LOSS_WEIGHT_SCHEDULE_REGISTRY: "constant" (f = 1, detectron2),
    # "linear_warmup", "step", "cosine", "learned" or "alternating" (instance losses on even
    # iterations, semantic on odd).
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME = "constant"
    # Whether the RPN losses are multiplied by lambda_i too (detectron2 leaves them unscaled).
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.SCALE_RPN = False
    # Start factors (f_i, f_s) of "linear_warmup" / "cosine"; they reach 1.0 at iteration
    # WARMUP_ITERS ("linear_warmup") or MAX_ITER ("cosine").
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.START_INSTANCE = 1.0
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.START_SEMANTIC = 0.0
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.WARMUP_ITERS = 1000
    # "step": at each iteration in STEPS both factors are multiplied by the matching pair of
    # FACTORS (a list of [instance_factor, semantic_factor]).
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.STEPS = []
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.FACTORS = []
    # "cosine": number of iterations of the schedule (0 = SOLVER.MAX_ITER).
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.MAX_ITER = 0

    # Panoptic post-processor (fusion of instances and semantic map).
    _C.MODEL.PANOPTIC_EXT.POSTPROCESS = CN()
    # Registered name in PANOPTIC_POSTPROCESSOR_REGISTRY.
    _C.MODEL.PANOPTIC_EXT.POSTPROCESS.NAME = "fast"
    # Which outputs inference returns besides "panoptic_seg": detectron2's evaluators read
    # "sem_seg" (full-resolution logits) and "instances" (with full masks); producing them costs
    # time. Without "instances", PanopticROIHeads predicts only the masks the fusion reads.
    _C.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_SEM_SEG = True
    _C.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES = True
    # segments_info category ids: "dataset" (DATASETS.TEST[0]'s metadata) or "detectron2".
    _C.MODEL.PANOPTIC_EXT.POSTPROCESS.CATEGORY_IDS = "dataset"

    # Semantic head (keys that SemanticFPNHead reads from MODEL.SEM_SEG_HEAD):
    # "upsampled": cross-entropy on logits upsampled to the input size (detectron2);
    # "downsampled": on targets downsampled to the logits' 1/4 scale (cheaper, mmdetection).
    _C.MODEL.SEM_SEG_HEAD.LOSS_ON = "upsampled"

    # Run management (detectron2's nodes; read by panoptic_ext.apps and the plugin's mapper and
    # evaluators, never by the model).
    # Optimizer: "SGD" (detectron2's) or "AdamW"; both read SOLVER.BASE_LR, WEIGHT_DECAY,
    # MOMENTUM (SGD).
    _C.SOLVER.OPTIMIZER = "SGD"
    # AdamW's (beta1, beta2).
    _C.SOLVER.BETAS = (0.9, 0.999)
    # Periodic checkpoints (model_XXXXXXX.pth) kept in OUTPUT_DIR, the newest; older ones are
    # deleted after each save. 0 keeps all. model_final.pth is always kept.
    _C.SOLVER.CHECKPOINT_MAX_TO_KEEP = 3
    # Metrics to compute on panoptic datasets: "panoptic_seg" (PQ), "sem_seg" (mIoU),
    # "instances" (COCO AP).
    _C.TEST.EVAL_TASKS = ["panoptic_seg", "sem_seg", "instances"]
    # Also write the predicted panoptic PNGs to OUTPUT_DIR/inference/<dataset>/ (for
    # `panoptic-pq`); off by default, like detectron2's COCOPanopticEvaluator (~10 ms per image).
    _C.TEST.SAVE_PANOPTIC_PNGS = False
    # Apply the CPU inference speed-ups (panoptic_ext.modeling.optimize_for_cpu_inference, same
    # outputs) to a CPU model at evaluation and prediction (train_net.py, PanopticPredictor).
    _C.TEST.CPU_SPEEDUPS = True
    # Opt-in reduced precision for CPU prediction (PanopticPredictor): bf16 autocast
    # (panoptic_ext.modeling.bf16_autocast); refused on CPUs without bf16 dot products.
    _C.TEST.CPU_BF16 = False
    # A record whose image or annotation cannot be read or is inconsistent: "fail" raises an
    # error naming the file; "skip" logs a warning naming it and skips it.
    _C.DATALOADER.ON_BAD_RECORD = "fail"
    _C.RUN = CN()
    # What a training started without --resume does when OUTPUT_DIR holds a previous run
    # (checkpoints, metrics.json): "refuse" (an error naming --resume and this key), "move" (all
    # of OUTPUT_DIR's files go to OUTPUT_DIR.previous-<date>-<time>) or "overwrite" (delete the
    # run's checkpoints, metrics, events and inference/ results).
    _C.RUN.EXISTING_OUTPUT = "refuse"
    # Load MODEL.WEIGHTS even if some weights do not fit the model (e.g. other class counts),
    # leaving those layers as initialised; by default such a checkpoint is an error.
    _C.RUN.ALLOW_PARTIAL_WEIGHTS = False
    # Seconds a download of MODEL.WEIGHTS from a URL may go without data before it fails.
    _C.RUN.WEIGHTS_DOWNLOAD_TIMEOUT = 60.0

    # The deprecated names (see DEPRECATED_KEYS), so that older configs still merge.
    for old in DEPRECATED_KEYS:
        node = _C
        *parents, leaf = old.split(".")
        for name in parents:
            if name not in node:
                node[name] = CN()
            node = node[name]
        node[leaf] = None


def _node_and_leaf(cfg: CN, key: str):
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    return node, leaf


def get_key(cfg: CN, key: str) -> Any:
    """
    The value of ``key`` (a dotted name), or that of its deprecated name where a config still
    sets that one (with a warning naming ``key``).
    """
    node, leaf = _node_and_leaf(cfg, key)
    for old, new in DEPRECATED_KEYS.items():
        if new == key:
            old_node, old_leaf = _node_and_leaf(cfg, old)
            if old_node.get(old_leaf) is not None:
                logger.warning("Config key %s is deprecated: use %s", old, new)
                return old_node[old_leaf]
    return node[leaf]


def upgrade_deprecated_keys(cfg: CN) -> CN:
    """
    Move each deprecated run key that ``cfg`` sets to its new name (warning once per key), in
    place, and return ``cfg``. The deprecated loss weights stay where they are: the old lambda_i
    multiplied every box and mask loss, which detectron2's INSTANCE_LOSS_WEIGHT does not (no
    classification loss), so ``PanopticFPNExt`` reads them itself and builds the model they gave
    on every path (this one and a plain ``build_model``).
    """
    for old, new in DEPRECATED_KEYS.items():
        if old.startswith("MODEL.PANOPTIC_EXT.LOSS_WEIGHTS."):
            continue
        old_node, old_leaf = _node_and_leaf(cfg, old)
        value = old_node.get(old_leaf)
        if value is None:
            continue
        logger.warning("Config key %s is deprecated: use %s", old, new)
        node, leaf = _node_and_leaf(cfg, new)
        node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else bool(value)
        old_node[old_leaf] = None
    return cfg
