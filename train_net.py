#!/usr/bin/env python
"""
Train, resume or evaluate a panoptic_ext model, as detectron2's ``tools/train_net.py``:

    python train_net.py --config-file configs/Synthetic-PanopticSegmentation/X.yaml
    python train_net.py --config-file X.yaml --resume
    python train_net.py --config-file X.yaml --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file X.yaml --num-gpus 2 SOLVER.IMS_PER_BATCH 8

or from a Python config (detectron2 LazyConfig), with ``key=value`` overrides:

    python train_net.py --config-file configs/Synthetic-PanopticSegmentation/X.py train.max_iter=600
"""

from panoptic_ext.apps.train import launch, main, parse_args

if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
