"""The project's config keys: ``add_panoptic_ext_config(cfg)``."""

from detectron2.config import CfgNode as CN


def add_panoptic_ext_config(cfg: CN) -> None:
    """
    Add panoptic_ext's keys to a detectron2 config, in place. Idempotent.

    New keys live under ``cfg.MODEL.PANOPTIC_EXT``; ``MODEL.SEM_SEG_HEAD`` only gains the keys its
    head reads. Defaults reproduce detectron2's PanopticFPN.
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

    # Loss-weight schedule: sets lambda_i (instance losses) and lambda_s (semantic loss).
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS = CN()
    # Registered name in LOSS_WEIGHT_SCHEDULE_REGISTRY: "constant", "linear_warmup", "step",
    # "cosine", "learned" or "alternating" (instance losses on even iterations, semantic on odd).
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME = "constant"
    # lambda_i: weight of the box classification, box regression and mask losses.
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.INSTANCE = 1.0
    # lambda_s: weight of the semantic segmentation loss.
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.SEMANTIC = 0.5
    # Whether the RPN losses are multiplied by lambda_i too (detectron2 leaves them unscaled).
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.SCALE_RPN = False
    # Start values of (lambda_i, lambda_s) for "linear_warmup" / "cosine"; they reach
    # INSTANCE / SEMANTIC at iteration WARMUP_ITERS ("linear_warmup") or MAX_ITER ("cosine").
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.START_INSTANCE = 1.0
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.START_SEMANTIC = 0.0
    _C.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.WARMUP_ITERS = 1000
    # "step": at each iteration in STEPS both weights are multiplied by the matching pair of
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

    # Semantic head (keys that SemanticFPNHead reads from MODEL.SEM_SEG_HEAD):
    # "upsampled": cross-entropy on logits upsampled to the input size (detectron2);
    # "downsampled": on targets downsampled to the logits' 1/4 scale (cheaper, mmdetection).
    _C.MODEL.SEM_SEG_HEAD.LOSS_ON = "upsampled"

    # Data loading.
    _C.MODEL.PANOPTIC_EXT.DATA = CN()
    # What to do with a record whose image or annotation cannot be read or is inconsistent:
    # "fail" raises an error naming the file; "skip" logs a warning naming it and skips it.
    _C.MODEL.PANOPTIC_EXT.DATA.ON_BAD_RECORD = "fail"

    # Optimizer choice (detectron2 v0.6's build_optimizer only knows SGD).
    _C.MODEL.PANOPTIC_EXT.SOLVER = CN()
    # "SGD" (detectron2's) or "AdamW"; both read SOLVER.BASE_LR, WEIGHT_DECAY, MOMENTUM (SGD).
    _C.MODEL.PANOPTIC_EXT.SOLVER.OPTIMIZER = "SGD"
    # AdamW's (beta1, beta2).
    _C.MODEL.PANOPTIC_EXT.SOLVER.BETAS = (0.9, 0.999)

    # Checkpoints (panoptic_ext.engine.checkpoint.PanopticCheckpointer).
    # Load MODEL.WEIGHTS even if some weights do not fit the model (e.g. other class counts),
    # leaving those layers as initialised; by default such a checkpoint is an error.
    _C.MODEL.PANOPTIC_EXT.ALLOW_PARTIAL_WEIGHTS = False
    _C.MODEL.PANOPTIC_EXT.CHECKPOINT = CN()
    # Periodic checkpoints (model_XXXXXXX.pth) kept in OUTPUT_DIR, the newest; older ones are
    # deleted after each save. 0 keeps all. model_final.pth is always kept.
    _C.MODEL.PANOPTIC_EXT.CHECKPOINT.MAX_TO_KEEP = 3
    # Seconds a download of MODEL.WEIGHTS from a URL may go without data before it fails.
    _C.MODEL.PANOPTIC_EXT.CHECKPOINT.DOWNLOAD_TIMEOUT = 60.0

    # What a training started without --resume does when OUTPUT_DIR holds a previous run
    # (checkpoints, metrics.json): "refuse" (an error naming --resume and this key), "move" (all
    # of OUTPUT_DIR's files go to OUTPUT_DIR.previous-<date>-<time>) or "overwrite" (delete the
    # run's checkpoints, metrics, events and inference/ results).
    _C.MODEL.PANOPTIC_EXT.EXISTING_OUTPUT = "refuse"

    # Evaluation (panoptic_ext.evaluation.build_panoptic_evaluators) of panoptic datasets.
    _C.MODEL.PANOPTIC_EXT.EVAL = CN()
    # Metrics to compute: "panoptic_seg" (PQ), "sem_seg" (mIoU), "instances" (COCO AP).
    _C.MODEL.PANOPTIC_EXT.EVAL.TASKS = ["panoptic_seg", "sem_seg", "instances"]
    # Also write the predicted panoptic PNGs to OUTPUT_DIR/inference/<dataset>/ (for
    # `panoptic-pq`); off by default, like detectron2's COCOPanopticEvaluator (~10 ms per image).
    _C.MODEL.PANOPTIC_EXT.EVAL.SAVE_PANOPTIC_PNGS = False
