"""``PanopticFPNDatasetMapper``: detectron2 panoptic records -> Panoptic FPN inputs, on the fly."""

import copy
import logging
from typing import Any, Dict, List, Optional, Set, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.file_io import PathManager

from ..config import get_key
from .class_counts import check_class_counts, config_class_counts
from .class_layout import PanopticClassLayout
from .exif import exif_note, image_size_as_read
from .label_space import dataset_class_layout
from .panoptic_ids import rgb_to_id
from .panoptic_targets import compact_panoptic_ids, targets_from_index_map
from .validation import check_dataset_paths, preparation_hint

__all__ = ["PanopticFPNDatasetMapper", "ON_BAD_RECORD_CHOICES"]

logger = logging.getLogger(__name__)

ON_BAD_RECORD_CHOICES = ("fail", "skip")


def _read(path: str, fmt: str, what: str) -> np.ndarray:
    """``utils.read_image`` with errors that name the file and say how to prepare it."""
    if not PathManager.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist. {preparation_hint(path)}")
    try:
        return utils.read_image(path, format=fmt)
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for corrupt/truncated files
        raise OSError(f"cannot read {what} {path}: {e}") from e


class PanopticFPNDatasetMapper:
    """
    Map a detectron2 panoptic record to Panoptic FPN's inputs, reading the targets on the fly.

    Accepted records:
    - "standard" (``pan_seg_file_name`` + ``segments_info``, as detectron2's
      ``register_coco_panoptic``, ``coco_2017_*_panoptic``, ``cityscapes_fine_panoptic_*`` and
      :func:`register_panoptic_dataset` make them): instances are the non-crowd thing segments,
      the semantic map follows the class layout, pixels of id 0 are void.
    - "separated" (``annotations`` + ``sem_seg_file_name``, detectron2's ``*_separated``): the
      semantic PNG holds merged labels (0 = things, 1..S = stuff, as made by detectron2's
      ``prepare_panoptic_fpn.py``); in the "all" layout thing pixels take the class of the
      instance (crowd or not) covering them, and uncovered ones are void.

    Output (training): "image" (uint8 CHW tensor in ``image_format``), "height", "width",
    "instances" (gt_boxes, gt_classes ``0..T-1``, gt_masks as BitMasks) and "sem_seg" (int64 HxW,
    ``ignore_label`` on void). Inference: "image", "height", "width" and the record's other keys.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str = "BGR",
        layout: Optional[PanopticClassLayout] = None,
        on_bad_record: str = "fail",
        recompute_boxes: bool = False,
    ):
        """
        Args:
            is_train (bool): produce training targets, or only the image (inference).
            augmentations (list): detectron2 augmentations, applied alike to image and targets.
            image_format (str): format for ``detection_utils.read_image`` ("BGR", "RGB", ...).
            layout (PanopticClassLayout): the dataset's classes; required when training.
            on_bad_record (str): "fail" raises on an unreadable or inconsistent record; "skip"
                logs a warning naming it and returns None (detectron2's loaders then draw another
                record). Inference always raises, so evaluation never silently drops images.
            recompute_boxes (bool): for "separated" records, replace the annotation boxes by the
                tight boxes of the augmented masks (detectron2 does it when cropping). Standard
                records always use the tight boxes of their masks.
        """
        if on_bad_record not in ON_BAD_RECORD_CHOICES:
            raise ValueError(
                f"DATALOADER.ON_BAD_RECORD must be one of {ON_BAD_RECORD_CHOICES}, "
                f"got {on_bad_record!r}"
            )
        if is_train and layout is None:
            raise ValueError("PanopticFPNDatasetMapper needs a class layout to make targets")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.layout = layout
        self.on_bad_record = on_bad_record
        self.recompute_boxes = recompute_boxes
        mode = "training" if is_train else "inference"
        logger.info(f"[PanopticFPNDatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: Optional[str] = None):
        """
        Augmentations as detectron2's ``DatasetMapper`` (resize + flip from ``INPUT.*``), with
        ``INPUT.CROP`` applied after the resize (scale jitter, then crop). For training, the class
        layout comes from the metadata of ``dataset_name`` (default: every ``DATASETS.TRAIN``
        entry, which must agree), and the config's NUM_CLASSES and the datasets' paths are
        checked.
        """
        augs = utils.build_augmentation(cfg, is_train)
        if is_train and cfg.INPUT.CROP.ENABLED:
            augs.insert(1, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        layout = None
        if is_train:  # inference needs no classes: any dataset (or none) can be mapped
            names = [dataset_name] if dataset_name else list(cfg.DATASETS.TRAIN)
            if not names:
                raise ValueError("cfg.DATASETS.TRAIN is empty: no dataset to take classes from")
            layouts = [cls._layout(cfg, name) for name in names]
            if any(lay != layouts[0] for lay in layouts[1:]):
                raise ValueError(f"datasets {names} have different classes; train on one layout")
            layout = layouts[0]
            things, _ = config_class_counts(cfg)  # semantic targets are made for any model
            check_class_counts(layout, names[0], things, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
            for name in names:
                check_dataset_paths(name)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "layout": layout,
            "on_bad_record": get_key(cfg, "DATALOADER.ON_BAD_RECORD"),
            "recompute_boxes": is_train and cfg.INPUT.CROP.ENABLED,
        }

    @staticmethod
    def _layout(cfg, name: str) -> PanopticClassLayout:
        return dataset_class_layout(
            name, cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        )

    # ---------------------------------------------------------------------------------------
    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """
        Args:
            dataset_dict (dict): one record in detectron2's dataset format.

        Returns:
            dict: the model's input, or None for a bad record with ``on_bad_record="skip"``.
        """
        dataset_dict = copy.deepcopy(dataset_dict)  # it is modified below
        if not self.is_train:
            return self._map_inference(dataset_dict)
        try:
            return self._map_train(dataset_dict)
        except (OSError, ValueError) as e:
            if self.on_bad_record == "skip":
                logger.warning(f"Skipping bad record {dataset_dict.get('file_name')!r}: {e}")
                return None
            raise

    def _read_image(self, dataset_dict: Dict[str, Any]) -> np.ndarray:
        image = _read(dataset_dict["file_name"], self.image_format, "image")
        _check_record_size(dataset_dict, image)
        utils.check_image_size(dataset_dict, image)  # also sets missing height/width
        return image

    def _map_inference(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        aug_input = T.AugInput(self._read_image(dataset_dict))
        self.augmentations(aug_input)
        dataset_dict["image"] = _to_chw_tensor(aug_input.image)
        dataset_dict.pop("annotations", None)
        dataset_dict.pop("sem_seg_file_name", None)
        return dataset_dict

    def _map_train(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        image = self._read_image(dataset_dict)
        _warn_exif_once(dataset_dict["file_name"])
        if "pan_seg_file_name" in dataset_dict and "segments_info" in dataset_dict:
            self._map_panoptic(dataset_dict, image)
        elif "annotations" in dataset_dict and "sem_seg_file_name" in dataset_dict:
            self._map_separated(dataset_dict, image)
        else:
            raise ValueError(
                f"record of {dataset_dict['file_name']} has neither 'pan_seg_file_name' + "
                "'segments_info' nor 'annotations' + 'sem_seg_file_name'"
            )
        dataset_dict.pop("annotations", None)
        dataset_dict.pop("sem_seg_file_name", None)
        return dataset_dict

    def _map_panoptic(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> None:
        png = dataset_dict["pan_seg_file_name"]
        pan = _read(png, "RGB", "panoptic PNG")
        _check_same_size(pan, image, png, dataset_dict["file_name"])
        index_map, segments = compact_panoptic_ids(
            rgb_to_id(pan), dataset_dict["segments_info"], png
        )
        aug_input = T.AugInput(image, sem_seg=index_map)
        self.augmentations(aug_input)
        targets = targets_from_index_map(aug_input.sem_seg, segments, self.layout, png)
        h, w = aug_input.image.shape[:2]
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.from_numpy(targets.gt_boxes))
        instances.gt_classes = torch.from_numpy(targets.gt_classes)
        instances.gt_masks = BitMasks(torch.from_numpy(targets.gt_masks))
        dataset_dict["image"] = _to_chw_tensor(aug_input.image)
        dataset_dict["instances"] = instances
        dataset_dict["sem_seg"] = torch.from_numpy(targets.sem_seg)

    def _map_separated(self, dataset_dict: Dict[str, Any], image: np.ndarray) -> None:
        sem_file = dataset_dict["sem_seg_file_name"]
        sem = _read(sem_file, "L", "semantic PNG").squeeze(2)
        _check_same_size(sem, image, sem_file, dataset_dict["file_name"])
        aug_input = T.AugInput(image, sem_seg=sem)
        transforms = self.augmentations(aug_input)
        image_shape = aug_input.image.shape[:2]
        annos = []
        for obj in dataset_dict["annotations"]:
            if "segmentation" not in obj:
                raise ValueError(f"{dataset_dict['file_name']}: annotation without 'segmentation'")
            annos.append(utils.transform_instance_annotations(obj, transforms, image_shape))
        crowd = [a for a in annos if a.get("iscrowd", 0)]
        things = [a for a in annos if not a.get("iscrowd", 0)]
        instances = utils.annotations_to_instances(things, image_shape, mask_format="bitmask")
        if not instances.has("gt_masks"):
            instances.gt_masks = BitMasks(torch.zeros((0,) + tuple(image_shape), dtype=torch.bool))
        try:
            instances.gt_classes = torch.tensor(
                [self.layout.instance_class(int(a["category_id"])) for a in things],
                dtype=torch.int64,
            )
            crowd_classes = [self.layout.instance_class(int(a["category_id"])) for a in crowd]
        except KeyError as e:
            raise ValueError(f"{dataset_dict['file_name']}: unknown thing category {e}") from None
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances = utils.filter_empty_instances(instances)
        sem_seg = self._separated_sem_seg(
            aug_input.sem_seg, instances, crowd, crowd_classes, sem_file
        )
        dataset_dict["image"] = _to_chw_tensor(aug_input.image)
        dataset_dict["instances"] = instances
        dataset_dict["sem_seg"] = torch.from_numpy(sem_seg)

    def _separated_sem_seg(self, sem, instances, crowd, crowd_classes, sem_file) -> np.ndarray:
        """Merged labels of a semantic PNG -> this layout's labels."""
        layout, ignore = self.layout, self.layout.ignore_label
        sem = sem.astype(np.int64)
        valid = sem != ignore
        num_merged = layout.num_stuff_classes + 1
        if (sem[valid] >= num_merged).any():
            bad = sorted(set(np.unique(sem[valid]).tolist()) - set(range(num_merged)))
            raise ValueError(
                f"{sem_file}: labels {bad[:10]} are outside 0 (things) .. {num_merged - 1} (stuff) "
                f"and not the ignore label {ignore}; semantic PNGs of 'separated' records hold "
                "merged labels (detectron2's prepare_panoptic_fpn.py)"
            )
        if layout.sem_seg_things == "merged":
            return sem
        out = np.where(valid & (sem > 0), sem - 1 + layout.num_thing_classes, ignore)
        things = sem == 0
        crowd_masks = []
        if crowd:
            crowd_inst = utils.annotations_to_instances(crowd, sem.shape, mask_format="bitmask")
            crowd_masks = list(crowd_inst.gt_masks.tensor.numpy())
        masks = crowd_masks + list(instances.gt_masks.tensor.numpy())
        classes = list(crowd_classes) + instances.gt_classes.tolist()
        for mask, k in zip(masks, classes):  # non-crowd instances painted last, on top
            out[mask & things] = k
        return out


def _to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


_exif_checked: Set[str] = set()


def _warn_exif_once(image_file: str) -> None:
    """Warn (once per file) that an image with an EXIF orientation is trained on rotated: sizes
    cannot tell whether a square image's annotation was drawn on the rotated image."""
    if image_file in _exif_checked:
        return
    _exif_checked.add(image_file)
    try:
        orientation = image_size_as_read(image_file)[2]
    except (OSError, SyntaxError, ValueError):
        return
    if orientation != 1:
        logger.warning(exif_note(image_file, orientation))


def _exif_hint(expected_hw: tuple, image: np.ndarray, image_file: str) -> Optional[str]:
    """Why an annotation of size ``expected_hw`` may not fit the image: its EXIF rotation."""
    if tuple(expected_hw) == image.shape[1::-1]:
        orientation = image_size_as_read(image_file)[2]
        if orientation >= 5:
            return "the annotation matches the stored pixels, but " + exif_note(
                image_file, orientation
            )
    return None


def _check_record_size(dataset_dict: Dict[str, Any], image: np.ndarray) -> None:
    """The record's height / width against the image as read (detectron2's check_image_size
    does not say why they differ)."""
    if "height" not in dataset_dict or "width" not in dataset_dict:
        return
    expected = (dataset_dict["height"], dataset_dict["width"])
    hint = (
        None
        if expected == image.shape[:2]
        else _exif_hint(expected, image, dataset_dict["file_name"])
    )
    if hint:
        raise ValueError(
            f"{dataset_dict['file_name']} is {image.shape[1]}x{image.shape[0]} (WxH) as read but "
            f"its annotation says {expected[1]}x{expected[0]}: {hint}"
        )


def _check_same_size(label: np.ndarray, image: np.ndarray, label_file: str, image_file: str):
    if label.shape[:2] != image.shape[:2]:
        hint = _exif_hint(label.shape[:2], image, image_file)
        raise ValueError(
            f"{label_file} is {label.shape[1]}x{label.shape[0]} (WxH) but its image {image_file} "
            f"is {image.shape[1]}x{image.shape[0]} as read: "
            + (hint or "annotation and image do not belong together")
        )
