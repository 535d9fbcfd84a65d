"""A registered dataset's classes, by name: for configs that build components from keyword
arguments (Python LazyConfigs), where no yacs ``DATASETS`` node says which dataset is meant."""

from typing import Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .class_layout import PanopticClassLayout
from .validation import check_dataset_paths

__all__ = ["dataset_class_layout", "output_stuff_ids", "output_thing_ids"]


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


def _layout_if_known(dataset_name: Optional[str], sem_seg_things: str):
    if not dataset_name or dataset_name not in MetadataCatalog.list():
        return None
    metadata = MetadataCatalog.get(dataset_name)
    if not hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
        return None
    return PanopticClassLayout.from_metadata(metadata, sem_seg_things)


def output_thing_ids(
    dataset_name: Optional[str], sem_seg_things: str = "merged"
) -> Optional[Tuple[int, ...]]:
    """A post-processor's ``thing_ids``: the ``category_id`` of each instance class in the label
    space of ``dataset_name``'s metadata; None (detectron2's convention) if it has none."""
    layout = _layout_if_known(dataset_name, sem_seg_things)
    return layout and layout.thing_output_ids


def output_stuff_ids(
    dataset_name: Optional[str], sem_seg_things: str = "merged"
) -> Optional[Tuple[int, ...]]:
    """A post-processor's ``stuff_ids``: the ``category_id`` of each merged stuff label (index 0,
    'things', unused); None (detectron2's convention) if the dataset has no such metadata."""
    layout = _layout_if_known(dataset_name, sem_seg_things)
    return layout and (0,) + layout.stuff_output_ids
