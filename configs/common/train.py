# Training options (detectron2's configs/common/train.py plus the project's run options; keys
# left out of a config take panoptic_ext.apps.train.lazy_config.DEFAULT_TRAIN's values).
train = dict(
    output_dir="./output",
    init_checkpoint="",  # MODEL.WEIGHTS
    max_iter=90000,
    amp=dict(enabled=False),  # automatic mixed precision (detectron2's AMPTrainer)
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    # period: SOLVER.CHECKPOINT_PERIOD; max_to_keep: newest periodic checkpoints kept (0: all)
    checkpointer=dict(period=5000, max_to_keep=3),
    eval_period=0,  # TEST.EVAL_PERIOD (0: evaluate after the last iteration only)
    log_period=20,
    device="cuda",
    seed=-1,
    cudnn_benchmark=False,
    allow_partial_weights=False,  # RUN.ALLOW_PARTIAL_WEIGHTS
    download_timeout=60.0,  # RUN.WEIGHTS_DOWNLOAD_TIMEOUT
    existing_output="refuse",  # RUN.EXISTING_OUTPUT: refuse, move or overwrite
    cpu_speedups=True,  # TEST.CPU_SPEEDUPS: CPU inference speed-ups at evaluation (same outputs)
)
