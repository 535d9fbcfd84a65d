# Data of a panoptic dataset, read on the fly by PanopticFPNDatasetMapper, and its evaluators:
# COCO panoptic by default (configs/COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml's DATASETS,
# INPUT and DATALOADER). The mapper and evaluators follow the model's semantic layout and outputs.
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

from panoptic_ext.data import PanopticFPNDatasetMapper
from panoptic_ext.data.label_space import dataset_class_layout
from panoptic_ext.evaluation import panoptic_evaluators

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(
        names="coco_2017_train_panoptic", filter_empty=False
    ),
    mapper=L(PanopticFPNDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=(640, 672, 704, 736, 768, 800),
                max_size=1333,
                sample_style="choice",
            ),
            L(T.RandomFlip)(horizontal=True, vertical=False),
        ],
        image_format="BGR",
        layout=L(dataset_class_layout)(
            dataset_name="${...dataset.names}",
            sem_seg_things="${model.postprocessor.sem_seg_things}",
            ignore_label="${model.sem_seg_head.ignore_value}",
            check_paths=True,
        ),
        on_bad_record="fail",  # or "skip" (a warning names the file)
        recompute_boxes=False,
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(
        names="coco_2017_val_panoptic", filter_empty=False
    ),
    mapper=L(PanopticFPNDatasetMapper)(
        is_train=False,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice")
        ],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(panoptic_evaluators)(
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference/${..test.dataset.names}",
    tasks=["panoptic_seg", "sem_seg", "instances"],
    sem_seg_things="${model.postprocessor.sem_seg_things}",
    returns_sem_seg="${model.postprocessor.return_sem_seg}",
    returns_instances="${model.postprocessor.return_instances}",
    save_pngs=False,
)
