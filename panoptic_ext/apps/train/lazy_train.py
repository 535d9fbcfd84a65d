"""``train_net.py`` with a Python config (detectron2 LazyConfig): the YAML path's features, with
``key=value`` overrides (``train.max_iter=100 model.roi_heads.num_classes=3``)."""

import argparse

from panoptic_ext.apps.train.lazy_config import check_lazy_class_counts, lazy_run_settings, load_lazy_config
from panoptic_ext.apps.train.lazy_trainer import LazyTrainer, build_lazy_model, lazy_test
from panoptic_ext.apps.train.train import check_eval_weights, evaluate_weights, run_in_output_dir

__all__ = ["lazy_main"]


def lazy_main(args: argparse.Namespace):
    """
    Train, resume (``--resume``) or evaluate (``--eval-only``: ``train.init_checkpoint``, or
    with ``--resume`` the output directory's last checkpoint) the Python config
    ``args.config_file`` with the overrides ``args.opts``.

    Returns:
        the evaluation results (dict), or None if training ran no evaluation.
    """
    cfg = load_lazy_config(args.config_file, args.opts)
    check_lazy_class_counts(cfg)  # before any model is built
    run = lazy_run_settings(cfg)
    train = cfg.train
    if args.eval_only:
        check_eval_weights(run, train.init_checkpoint, args.resume)

    def evaluate():
        return evaluate_weights(
            build_lazy_model(cfg),
            lambda model: lazy_test(cfg, model),
            output_dir=train.output_dir,
            weights=train.init_checkpoint,
            resume=args.resume,
            allow_partial=train.allow_partial_weights,
            download_timeout=train.download_timeout,
        )

    return run_in_output_dir(cfg, run, args, evaluate, lambda: LazyTrainer(cfg))
