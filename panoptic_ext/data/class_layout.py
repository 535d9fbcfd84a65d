"""How a panoptic dataset's categories map to Panoptic FPN's instance and semantic labels.

Three numberings meet here:
- dataset ids: the category ids of the annotation files (COCO: 1..200, Cityscapes: 7..33);
- record ids: the ids in detectron2's dataset records (``segments_info[i]["category_id"]``),
  i.e. the values of the metadata's ``thing/stuff_dataset_id_to_contiguous_id``;
- model labels: instance classes ``0..T-1`` and semantic labels, either "merged"
  (0 = all things, ``1..S`` = stuff; detectron2's layout) or "all" (``0..T-1`` = things in
  instance-class order, ``T..T+S-1`` = stuff).

Panoptic outputs speak the metadata's label space: a segment's ``category_id`` is its record id
(the metadata's contiguous id), which detectron2's ``Visualizer`` and ``COCOPanopticEvaluator``
read; for detectron2's "separated" metadata, whose stuff classes are not record ids, that is
detectron2's PanopticFPN convention (instance class; merged semantic label ``1..S``).
"""

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Dict, Sequence, Tuple

__all__ = ["PanopticClassLayout", "SEM_SEG_THINGS_MODES"]

SEM_SEG_THINGS_MODES = ("merged", "all")


@dataclass(frozen=True)
class PanopticClassLayout:
    """
    Attributes:
        thing_record_ids (tuple[int]): record id of each instance class ``k``.
        stuff_record_ids (tuple[int]): record id of each stuff class ``j`` (merged label 1 + j).
        thing_dataset_ids (tuple[int]): dataset id of each instance class.
        stuff_dataset_ids (tuple[int]): dataset id of each stuff class.
        thing_names (tuple[str]): names of the thing classes.
        stuff_names (tuple[str]): names of the stuff classes (without "things").
        sem_seg_things (str): "merged" or "all".
        ignore_label (int): semantic label of void pixels.
    """

    thing_record_ids: Tuple[int, ...]
    stuff_record_ids: Tuple[int, ...]
    thing_dataset_ids: Tuple[int, ...]
    stuff_dataset_ids: Tuple[int, ...]
    thing_names: Tuple[str, ...]
    stuff_names: Tuple[str, ...]
    sem_seg_things: str = "merged"
    ignore_label: int = 255

    @staticmethod
    def check_sem_seg_things(
        mode: str, num_thing_classes: int = None, num_sem_seg_classes: int = None
    ) -> None:
        """
        The one check of ``MODEL.PANOPTIC_EXT.SEM_SEG_THINGS`` against the class counts that do
        not depend on a dataset (T = ``ROI_HEADS.NUM_CLASSES``, ``SEM_SEG_HEAD.NUM_CLASSES``).
        """
        if mode not in SEM_SEG_THINGS_MODES:
            raise ValueError(
                f"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS must be one of {SEM_SEG_THINGS_MODES}, "
                f"got {mode!r}"
            )
        if mode != "all" or num_thing_classes is None:
            return
        if num_thing_classes <= 0:
            raise ValueError(
                "MODEL.PANOPTIC_EXT.SEM_SEG_THINGS 'all' needs thing classes "
                f"(MODEL.ROI_HEADS.NUM_CLASSES > 0, got {num_thing_classes})"
            )
        if num_sem_seg_classes is not None and num_sem_seg_classes <= num_thing_classes:
            raise ValueError(
                "With MODEL.PANOPTIC_EXT.SEM_SEG_THINGS 'all', MODEL.SEM_SEG_HEAD.NUM_CLASSES "
                f"({num_sem_seg_classes}) must count the {num_thing_classes} thing classes "
                "(MODEL.ROI_HEADS.NUM_CLASSES) plus the stuff classes"
            )

    def __post_init__(self):
        self.check_sem_seg_things(self.sem_seg_things)
        overlap = set(self.thing_record_ids) & set(self.stuff_record_ids)
        if overlap:
            raise ValueError(f"category ids {sorted(overlap)} are both thing and stuff classes")
        if len(self.thing_record_ids) != len(self.thing_dataset_ids) or len(
            self.stuff_record_ids
        ) != len(self.stuff_dataset_ids):
            raise ValueError("record ids and dataset ids must have the same length")

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_thing_classes(self) -> int:
        """T: ROI_HEADS.NUM_CLASSES."""
        return len(self.thing_record_ids)

    @property
    def num_stuff_classes(self) -> int:
        """S: stuff classes, without the merged 'things' class."""
        return len(self.stuff_record_ids)

    @property
    def num_sem_seg_classes(self) -> int:
        """SEM_SEG_HEAD.NUM_CLASSES: S + 1 ("merged") or T + S ("all")."""
        if self.sem_seg_things == "merged":
            return self.num_stuff_classes + 1
        return self.num_thing_classes + self.num_stuff_classes

    # ---- record ids -> model labels ----------------------------------------------------------
    def instance_class(self, record_id: int) -> int:
        """Instance class of a thing record id (KeyError if it is not a thing)."""
        return self._thing_index[record_id]

    def is_thing(self, record_id: int) -> bool:
        return record_id in self._thing_index

    def sem_seg_label(self, record_id: int) -> int:
        """Semantic label of a record id, in this layout's mode."""
        if record_id in self._thing_index:
            k = self._thing_index[record_id]
            return 0 if self.sem_seg_things == "merged" else k
        if record_id in self._stuff_index:
            j = self._stuff_index[record_id]
            return 1 + j if self.sem_seg_things == "merged" else self.num_thing_classes + j
        raise KeyError(
            f"category id {record_id} is neither a thing nor a stuff class of this dataset "
            f"(things: {list(self.thing_record_ids)}, stuff: {list(self.stuff_record_ids)})"
        )

    # ---- panoptic outputs -> dataset ids ------------------------------------------------------
    @property
    def thing_output_ids(self) -> Tuple[int, ...]:
        """``category_id`` of each instance class in panoptic outputs (and ``pred_classes``)."""
        return self.thing_record_ids

    @property
    def stuff_output_ids(self) -> Tuple[int, ...]:
        """``category_id`` of each stuff class in panoptic outputs: its record id, or for
        detectron2's "separated" metadata (stuff not in records) its merged label ``1..S``,
        which that metadata's ``stuff_classes`` index."""
        if self.stuff_record_ids and all(r < 0 for r in self.stuff_record_ids):
            return tuple(range(1, self.num_stuff_classes + 1))
        return self.stuff_record_ids

    def dataset_id(self, isthing: bool, category_id: int) -> int:
        """Dataset category id of a predicted segment (``category_id`` in the output space)."""
        ids = self._thing_output_to_dataset if isthing else self._stuff_output_to_dataset
        if category_id not in ids:
            kind = "thing" if isthing else "stuff"
            raise ValueError(
                f"{kind} category_id {category_id} is not one of this dataset's output ids "
                f"{sorted(ids)}"
            )
        return ids[category_id]

    def model_label(self, isthing: bool, category_id: int) -> int:
        """A predicted segment's class in the model's terms: instance class (things) or merged
        semantic label ``1..S`` (stuff)."""
        ids = self.thing_output_ids if isthing else self.stuff_output_ids
        if category_id not in ids:
            raise ValueError(
                f"{'thing' if isthing else 'stuff'} category_id {category_id} is not one of "
                f"this dataset's output ids {list(ids)}"
            )
        return ids.index(category_id) + (0 if isthing else 1)

    def category_name(self, isthing: bool, category_id: int) -> str:
        """Name of a predicted segment's class (``category_id`` in the output space)."""
        ids = self.thing_output_ids if isthing else self.stuff_output_ids
        names = self.thing_names if isthing else self.stuff_names
        return names[ids.index(category_id)]

    @cached_property
    def _thing_output_to_dataset(self) -> Dict[int, int]:
        return dict(zip(self.thing_output_ids, self.thing_dataset_ids))

    @cached_property
    def _stuff_output_to_dataset(self) -> Dict[int, int]:
        return dict(zip(self.stuff_output_ids, self.stuff_dataset_ids))

    @property
    def merged_stuff_classes(self) -> Tuple[str, ...]:
        """Names indexed by merged semantic label, as detectron2's ``stuff_classes``."""
        return ("things",) + self.stuff_names

    # ---- construction -------------------------------------------------------------------------
    @cached_property
    def _thing_index(self) -> Dict[int, int]:
        return {r: k for k, r in enumerate(self.thing_record_ids)}

    @cached_property
    def _stuff_index(self) -> Dict[int, int]:
        return {r: j for j, r in enumerate(self.stuff_record_ids)}

    @classmethod
    def from_metadata(
        cls, metadata: Any, sem_seg_things: str = "merged", ignore_label: int = None
    ) -> "PanopticClassLayout":
        """
        Build the layout of a dataset from its detectron2 metadata.

        Works with detectron2's builtin panoptic metadata (COCO "standard": contiguous ids over all
        133 categories; Cityscapes: train ids), its "separated" COCO metadata (stuff ids 1..53 and
        an extra "things" class 0) and panoptic_ext's own registrations.

        Args:
            metadata: a ``MetadataCatalog`` entry with ``thing_dataset_id_to_contiguous_id``,
                ``stuff_dataset_id_to_contiguous_id``, ``thing_classes``, ``stuff_classes``.
            sem_seg_things (str): "merged" or "all".
            ignore_label (int): defaults to ``metadata.ignore_label`` or 255.
        """
        for key in ("thing_dataset_id_to_contiguous_id", "thing_classes"):
            if not hasattr(metadata, key):
                raise ValueError(
                    f"dataset {getattr(metadata, 'name', '?')!r} has no metadata {key!r}: "
                    "register it with panoptic_ext.data.register_panoptic_dataset"
                )
        thing_map: Dict[int, int] = dict(metadata.thing_dataset_id_to_contiguous_id)
        stuff_map: Dict[int, int] = dict(getattr(metadata, "stuff_dataset_id_to_contiguous_id", {}))
        thing_classes: Sequence[str] = metadata.thing_classes
        stuff_classes: Sequence[str] = getattr(metadata, "stuff_classes", [])

        things = sorted(thing_map.items(), key=lambda kv: kv[1])
        thing_values = {v for _, v in things}
        stuff = sorted(
            ((d, c) for d, c in stuff_map.items() if d not in thing_map), key=lambda kv: kv[1]
        )
        # detectron2's "separated" metadata numbers stuff 1..53 with an extra class "things"
        # (dataset id 0 -> 0); its stuff values overlap the thing values, which is fine there
        # because records of that kind carry stuff in a semantic PNG, not in segments_info.
        if stuff_classes and stuff and stuff[0][1] == 0 and stuff_classes[0] == "things":
            stuff = stuff[1:]
        separated = bool(thing_values & {c for _, c in stuff})

        def _name(names: Sequence[str], index: int, fallback: str) -> str:
            return names[index] if 0 <= index < len(names) else fallback

        if separated:
            thing_names = tuple(_name(thing_classes, c, str(d)) for d, c in things)
            thing_record_ids = tuple(range(len(things)))
            stuff_record_ids = tuple(-(1 + j) for j in range(len(stuff)))  # not in records
        else:
            thing_names = tuple(_name(thing_classes, c, str(d)) for d, c in things)
            thing_record_ids = tuple(c for _, c in things)
            stuff_record_ids = tuple(c for _, c in stuff)
        stuff_names = tuple(_name(stuff_classes, c, str(d)) for d, c in stuff)
        if ignore_label is None:
            ignore_label = getattr(metadata, "ignore_label", 255)
        return cls(
            thing_record_ids=thing_record_ids,
            stuff_record_ids=stuff_record_ids,
            thing_dataset_ids=tuple(d for d, _ in things),
            stuff_dataset_ids=tuple(d for d, _ in stuff),
            thing_names=thing_names,
            stuff_names=stuff_names,
            sem_seg_things=sem_seg_things,
            ignore_label=int(ignore_label),
        )
