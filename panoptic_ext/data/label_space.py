"""A registered dataset's classes, by name: for configs that build components from keyword
arguments (Python LazyConfigs), where no yacs ``DATASETS`` node says which dataset is meant."""

from typing import Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .class_layout import PanopticClassLayout
from .validation import check_dataset_paths

__all__ = ["CATEGORY_ID_CONVENTIONS", "dataset_class_layout", "output_category_ids"]


def dataset_class_layout(
    dataset_name: str,
    sem_seg_things: str = "merged",
    ignore_label: Optional[int] = None,
    check_paths: bool = False,
) -> PanopticClassLayout:
    """
    The class layout of a registered dataset (e.g. ``PanopticFPNDatasetMapper``'s ``layout``).

    Args:
        dataset_name (str): a name in ``DatasetCatalog``.
        sem_seg_things (str): "merged" or "all".
        ignore_label (int): default: the metadata's ``ignore_label``, or 255.
        check_paths (bool): check that the dataset's image and annotation folders exist (what a
            training mapper built from a yacs config checks).

    Raises:
        KeyError: the dataset is not registered.
        ValueError: its metadata has no panoptic classes.
    """
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(
            f"dataset {dataset_name!r} is not registered (see register_panoptic_dataset)"
        )
    layout = PanopticClassLayout.from_metadata(
        MetadataCatalog.get(dataset_name), sem_seg_things, ignore_label
    )
    if check_paths:
        check_dataset_paths(dataset_name)
    return layout


CATEGORY_ID_CONVENTIONS = ("dataset", "detectron2")
_KEY = "MODEL.PANOPTIC_EXT.POSTPROCESS.CATEGORY_IDS"


def _is_registered(dataset_name: str) -> bool:
    """In DatasetCatalog, or metadata with panoptic classes set (MetadataCatalog.get creates an
    empty entry, so only names already listed are read)."""
    if dataset_name in DatasetCatalog.list():
        return True
    return dataset_name in MetadataCatalog.list() and hasattr(
        MetadataCatalog.get(dataset_name), "thing_dataset_id_to_contiguous_id"
    )


def output_category_ids(
    dataset_name: Optional[str], sem_seg_things: str = "merged", convention: str = "dataset"
) -> Tuple[Optional[Tuple[int, ...]], Optional[Tuple[int, ...]]]:
    """
    A post-processor's ``(thing_ids, stuff_ids)``: the ``category_id`` of each instance class
    and of each merged stuff label (index 0, 'things', unused) in the panoptic output.

    Args:
        dataset_name (str): ``DATASETS.TEST[0]``, or None when DATASETS.TEST is empty.
        sem_seg_things (str): "merged" or "all".
        convention (str): ``MODEL.PANOPTIC_EXT.POSTPROCESS.CATEGORY_IDS``: "dataset" (the ids of
            ``dataset_name``'s metadata, which detectron2's ``Visualizer`` and
            ``COCOPanopticEvaluator`` read) or "detectron2" (instance class and merged semantic
            label, as detectron2's PanopticFPN outputs).

    Returns:
        (None, None) for detectron2's convention: with "detectron2", without a dataset, or for a
        registered dataset whose metadata has no panoptic classes.

    Raises:
        ValueError: an unknown convention, or "dataset" with a dataset that is not registered
            (the ids must not depend on whether it is registered before or after the build).
    """
    if convention not in CATEGORY_ID_CONVENTIONS:
        raise ValueError(
            f"{_KEY} must be one of {list(CATEGORY_ID_CONVENTIONS)}, got {convention!r}"
        )
    if convention == "detectron2" or not dataset_name:
        return None, None
    if not _is_registered(dataset_name):
        raise ValueError(
            f"DATASETS.TEST[0] = {dataset_name!r} is not registered when the model is built, and "
            f'{_KEY} = "dataset" takes the output category ids from its metadata: register it '
            f'before build_model, or set {_KEY} to "detectron2" (detectron2\'s PanopticFPN ids: '
            "instance class, merged semantic label)"
        )
    metadata = MetadataCatalog.get(dataset_name)
    if not hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
        return None, None
    layout = PanopticClassLayout.from_metadata(metadata, sem_seg_things)
    return layout.thing_output_ids, (0,) + layout.stuff_output_ids
