"""``build_panoptic_evaluators``: the evaluators of a dataset, by its ``evaluator_type``."""

import logging
from typing import Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator

from ..compat import detectron2_has_compiled_ops
from ..config import get_key
from ..data.class_layout import PanopticClassLayout
from ..data.validation import check_dataset_paths
from .instance_evaluation import PanopticInstanceEvaluator
from .panoptic_evaluation import PanopticQualityEvaluator
from .sem_seg_evaluation import PanopticSemSegEvaluator

__all__ = ["build_panoptic_evaluators", "panoptic_evaluators", "EVAL_TASKS"]

logger = logging.getLogger(__name__)

EVAL_TASKS = ("panoptic_seg", "sem_seg", "instances")
PANOPTIC_EVALUATOR_TYPES = ("coco_panoptic_seg", "cityscapes_panoptic_seg")


def _option(cfg: CfgNode, key: str, default):
    """``key`` of a config that may lack panoptic_ext's keys (detectron2's own config)."""
    if "PANOPTIC_EXT" not in cfg.MODEL:
        return default
    return get_key(cfg, key)


def build_panoptic_evaluators(
    cfg: CfgNode,
    dataset_name: str,
    output_dir: Optional[str] = None,
    tasks: Optional[Sequence[str]] = None,
) -> DatasetEvaluators:
    """
    Evaluators of ``dataset_name``, chosen by ``MetadataCatalog.get(dataset_name).evaluator_type``:

    - "coco_panoptic_seg" (COCO, the synthetic and custom panoptic datasets): PQ
      (:class:`PanopticQualityEvaluator`), mIoU over the merged labels (things + S stuff) and
      instance AP (:class:`PanopticInstanceEvaluator`);
    - "cityscapes_panoptic_seg": PQ, mIoU over the T + S (19) classes, instance AP;
    - "sem_seg": detectron2's ``SemSegEvaluator``; "coco": detectron2's ``COCOEvaluator``
      (fast path only with compiled ops).

    Args:
        cfg (CfgNode): the config; reads MODEL.PANOPTIC_EXT.SEM_SEG_THINGS, TEST.EVAL_TASKS,
            TEST.SAVE_PANOPTIC_PNGS (optional, default False: see
            :class:`PanopticQualityEvaluator`'s ``save_pngs``) and POSTPROCESS.RETURN_SEM_SEG /
            RETURN_INSTANCES (what the model outputs).
        dataset_name (str): a registered dataset.
        output_dir (str): where evaluators save predictions and results.
        tasks (list[str]): subset of ("panoptic_seg", "sem_seg", "instances"); default
            TEST.EVAL_TASKS.
    """
    check_dataset_paths(dataset_name)  # a missing file named with the step that makes it
    return panoptic_evaluators(
        dataset_name,
        output_dir,
        tasks=tasks if tasks is not None else _option(cfg, "TEST.EVAL_TASKS", EVAL_TASKS),
        sem_seg_things=_option(cfg, "MODEL.PANOPTIC_EXT.SEM_SEG_THINGS", "merged"),
        returns_sem_seg=_option(cfg, "MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_SEM_SEG", True),
        returns_instances=_option(cfg, "MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES", True),
        save_pngs=bool(_option(cfg, "TEST.SAVE_PANOPTIC_PNGS", False)),
    )


def panoptic_evaluators(
    dataset_name: str,
    output_dir: Optional[str] = None,
    *,
    tasks: Sequence[str] = EVAL_TASKS,
    sem_seg_things: str = "merged",
    returns_sem_seg: bool = True,
    returns_instances: bool = True,
    save_pngs: bool = False,
) -> DatasetEvaluators:
    """
    :func:`build_panoptic_evaluators` from keyword arguments (Python configs:
    ``L(panoptic_evaluators)(dataset_name=..., ...)``).

    Args:
        dataset_name (str): a registered dataset.
        output_dir (str): where evaluators save predictions and results.
        tasks (list[str]): subset of ("panoptic_seg", "sem_seg", "instances").
        sem_seg_things (str): the model's semantic layout, "merged" or "all".
        returns_sem_seg, returns_instances (bool): whether the model outputs "sem_seg" /
            "instances" (its post-processor's ``return_sem_seg`` / ``return_instances``).
        save_pngs (bool): see :class:`PanopticQualityEvaluator`.
    """
    metadata = MetadataCatalog.get(dataset_name)
    evaluator_type = metadata.get("evaluator_type")
    if evaluator_type == "sem_seg":
        return DatasetEvaluators([SemSegEvaluator(dataset_name, output_dir=output_dir)])
    if evaluator_type == "coco":
        return DatasetEvaluators(
            [
                COCOEvaluator(
                    dataset_name,
                    output_dir=output_dir,
                    use_fast_impl=detectron2_has_compiled_ops(),
                )
            ]
        )
    if evaluator_type not in PANOPTIC_EVALUATOR_TYPES:
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name!r} with evaluator_type {evaluator_type!r}; "
            f"supported: {PANOPTIC_EVALUATOR_TYPES + ('sem_seg', 'coco')}"
        )
    tasks = tuple(tasks)
    unknown = set(tasks) - set(EVAL_TASKS)
    if unknown:
        raise ValueError(f"unknown evaluation tasks {sorted(unknown)}; choose from {EVAL_TASKS}")
    layout = PanopticClassLayout.from_metadata(metadata)

    evaluators = []
    if "panoptic_seg" in tasks:
        evaluators.append(PanopticQualityEvaluator(dataset_name, output_dir, save_pngs=save_pngs))
    if "sem_seg" in tasks:
        # Cityscapes reports mIoU over its 19 classes: the semantic branch gives them directly
        # only with SEM_SEG_THINGS="all"; otherwise the panoptic output's classes are used.
        label_space = "all" if evaluator_type == "cityscapes_panoptic_seg" else "merged"
        sem_seg_has_classes = label_space == "merged" or sem_seg_things == "all"
        source = "sem_seg" if returns_sem_seg and sem_seg_has_classes else "panoptic_seg"
        evaluators.append(
            PanopticSemSegEvaluator(
                dataset_name, output_dir, label_space=label_space, prediction_source=source
            )
        )
    if "instances" in tasks:
        if not returns_instances:
            logger.info("Instance AP skipped: the model does not return instances")
        elif layout.num_thing_classes == 0:
            logger.info(f"Instance AP skipped: {dataset_name!r} has no thing classes")
        else:
            evaluators.append(PanopticInstanceEvaluator(dataset_name, output_dir))
    if not evaluators:
        raise ValueError(f"no evaluator left for {dataset_name!r} with tasks {tasks}")
    return DatasetEvaluators(evaluators)
