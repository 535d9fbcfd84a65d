"""The one class-count check of a config against a dataset's classes (upstream issue 1201), in the
config language of the caller: yacs keys (``MODEL.ROI_HEADS.NUM_CLASSES``, used by the start-up
checks of ``train_net.py`` and by ``PanopticFPNDatasetMapper``) or LazyConfig paths
(``model.roi_heads.num_classes``)."""

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from .class_layout import PanopticClassLayout

__all__ = [
    "ClassCountKeys",
    "LAZY_CLASS_COUNT_KEYS",
    "YAML_CLASS_COUNT_KEYS",
    "check_class_counts",
    "class_count_problems",
    "config_class_counts",
]


@dataclass(frozen=True)
class ClassCountKeys:
    """How a config language names the class-count keys and writes an override, so that the one
    class-count check speaks the user's config language."""

    things: str  # the instance branch's class count
    sem_seg: str  # the semantic head's class count
    sem_seg_things: str  # "merged" or "all"
    semantic_only: str  # how to pick a model without an instance branch
    assign: str = "{} {}"  # an override of key {} to value {}


YAML_CLASS_COUNT_KEYS = ClassCountKeys(
    things="MODEL.ROI_HEADS.NUM_CLASSES",
    sem_seg="MODEL.SEM_SEG_HEAD.NUM_CLASSES",
    sem_seg_things="MODEL.PANOPTIC_EXT.SEM_SEG_THINGS",
    semantic_only="MODEL.META_ARCHITECTURE SemanticSegmentor",
)
LAZY_CLASS_COUNT_KEYS = ClassCountKeys(
    things="model.roi_heads.num_classes",
    sem_seg="model.sem_seg_head.num_classes",
    sem_seg_things="model.postprocessor.sem_seg_things",
    semantic_only="a model without roi_heads, e.g. detectron2's SemanticSegmentor",
    assign="{}={}",
)


def _class_list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _class_count_check(
    layout: PanopticClassLayout,
    dataset_name: str,
    num_thing_classes: Optional[int],
    num_sem_seg_classes: Optional[int],
    keys: ClassCountKeys,
) -> Tuple[List[str], List[str]]:
    T, S, mode = layout.num_thing_classes, layout.num_stuff_classes, layout.sem_seg_things
    described = (
        f"dataset {dataset_name!r} has {T} thing classes ({_class_list(layout.thing_names)}) and "
        f"{S} stuff classes ({_class_list(layout.stuff_names)})"
    )
    if num_thing_classes is not None and T == 0:
        problem = (
            f"dataset {dataset_name!r} has no thing classes (no category with isthing 1; {S} "
            f"stuff classes: {_class_list(layout.stuff_names)}), but the model has an instance "
            f"branch ({keys.things} = {num_thing_classes}), which needs at least one: mark the "
            f"countable categories isthing 1, or train a semantic segmentation model "
            f"({keys.semantic_only})"
        )
        return [problem], []
    problems, fixes = [], []
    if num_thing_classes is not None and num_thing_classes != T:
        fixes.append(keys.assign.format(keys.things, T))
        problems.append(
            f"{keys.things} = {num_thing_classes}, but {described}: it needs {fixes[-1]}"
        )
    needed = layout.num_sem_seg_classes
    if num_sem_seg_classes is not None and num_sem_seg_classes != needed:
        how = (
            f"{S} stuff + 1 'things' class"
            if mode == "merged"
            else f"{T} thing + {S} stuff classes"
        )
        fixes.append(keys.assign.format(keys.sem_seg, needed))
        problems.append(
            f"{keys.sem_seg} = {num_sem_seg_classes}, but {described}, so with "
            f"{keys.sem_seg_things} = {mode!r} it needs {fixes[-1]} ({how})"
        )
    return problems, fixes


def class_count_problems(
    layout: PanopticClassLayout,
    dataset_name: str,
    num_thing_classes: Optional[int],
    num_sem_seg_classes: Optional[int],
    keys: ClassCountKeys = YAML_CLASS_COUNT_KEYS,
) -> List[str]:
    """
    The one check of a model's class counts against a dataset's classes (upstream issue 1201):
    the instance branch needs T classes, the semantic head S + 1 ("merged") or T + S ("all").

    Args:
        layout (PanopticClassLayout): the dataset's classes, in the config's SEM_SEG_THINGS mode.
        dataset_name (str): named in the messages.
        num_thing_classes (int or None): the config's instance class count; None: the model has
            no instance branch.
        num_sem_seg_classes (int or None): the semantic head's class count; None: no such head.
        keys (ClassCountKeys): the config language of the messages
            (:data:`YAML_CLASS_COUNT_KEYS` or :data:`LAZY_CLASS_COUNT_KEYS`).

    Returns:
        list[str]: one message per wrong key, naming the key, its value, the dataset's classes
        and the value it needs; empty if the counts fit.
    """
    problems, _ = _class_count_check(
        layout, dataset_name, num_thing_classes, num_sem_seg_classes, keys
    )
    return problems


def check_class_counts(
    layout: PanopticClassLayout,
    dataset_name: str,
    num_thing_classes: Optional[int],
    num_sem_seg_classes: Optional[int],
    keys: ClassCountKeys = YAML_CLASS_COUNT_KEYS,
) -> None:
    """
    :func:`class_count_problems`, raised.

    Raises:
        ValueError: every problem, then the overrides that fix them ("the config needs: ...").
    """
    problems, fixes = _class_count_check(
        layout, dataset_name, num_thing_classes, num_sem_seg_classes, keys
    )
    if problems:
        fix = f"\n  the config needs: {' '.join(fixes)}" if fixes else ""
        raise ValueError("config does not fit its dataset:\n  " + "\n  ".join(problems) + fix)


def config_class_counts(cfg: Any) -> Tuple[Optional[int], Optional[int]]:
    """A yacs config's (instance, semantic) class counts for :func:`class_count_problems`; None
    for a branch that its MODEL.META_ARCHITECTURE does not have."""
    arch = cfg.MODEL.META_ARCHITECTURE
    things = None if arch == "SemanticSegmentor" else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    sem_seg = None if arch == "GeneralizedRCNN" else cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    return things, sem_seg
