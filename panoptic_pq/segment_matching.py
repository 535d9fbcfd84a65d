"""Segment matching and counting for panoptic quality (Kirillov et al., 2019): the TP / FP / FN
and IoU sums of one image (``pq_image``, ``PQStat``), vectorised with numpy.

The semantics are panopticapi's ``pq_compute_single_core`` (and of its port in cityscapesscripts):

- segment id 0 is VOID; gt pixels whose id is not listed in the gt segments are ignored;
- a gt and a predicted segment of the same category match when IoU > 0.5, where the predicted
  segment's pixels on VOID are left out of the union; crowd gt segments never match;
- the gt segment's area is taken from the gt JSON (``"area"``), a predicted one's from its pixels;
- an unmatched predicted segment is not a false positive when more than half of its pixels lie
  on VOID or on the (last listed) crowd gt segment of its category;
- categories are averaged over those with at least one TP, FP or FN.

Instead of panopticapi's ``np.unique`` over ``gt * OFFSET + pred`` (a sort of every pixel)
and Python loops over segment pairs, the distinct (gt id, pred id) pairs are counted over the runs
of the two maps (:func:`pair_counts`, ``np.unique`` over one key per run); matching then works on
small (gt x pred) matrices. numpy only: this module imports neither torch nor detectron2.
"""

import threading
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "OFFSET",
    "VOID",
    "PQStat",
    "PanopticFormatError",
    "pq_image",
    "pair_counts",
    "segment_index_map",
    "int_field",
]

OFFSET = 256 * 256 * 256
VOID = 0


class PanopticFormatError(ValueError):
    """A panoptic annotation or prediction is inconsistent (names the image)."""


class PQStat:
    """
    Sums of IoU, TP, FP and FN per category, aligned with ``category_ids``.

    Args:
        category_ids (sequence[int]): the dataset's category ids (the gt JSON's categories).
    """

    def __init__(self, category_ids: Sequence[int]):
        self.category_ids = tuple(int(c) for c in category_ids)
        n = len(self.category_ids)
        self.iou = np.zeros(n, dtype=np.float64)
        self.tp = np.zeros(n, dtype=np.int64)
        self.fp = np.zeros(n, dtype=np.int64)
        self.fn = np.zeros(n, dtype=np.int64)

    def __iadd__(self, other: "PQStat") -> "PQStat":
        if other.category_ids != self.category_ids:
            raise ValueError("cannot add PQStat objects over different categories")
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    def pq_average(
        self, categories: Mapping[int, Mapping[str, Any]], isthing: Optional[bool]
    ) -> Tuple[Dict[str, float], Dict[int, Dict[str, float]]]:
        """
        panopticapi's ``PQStat.pq_average``.

        Args:
            categories (dict): category id -> category dict with ``"isthing"``.
            isthing (bool or None): True = things only, False = stuff only, None = all.

        Returns:
            ({"pq", "sq", "rq", "n"}, {category id: {"pq", "sq", "rq"}}). Categories without any
            TP, FP or FN get zeros and do not count in ``n``; when ``n`` is 0 the averages are
            0.0 (panopticapi divides by zero).
        """
        row = {c: i for i, c in enumerate(self.category_ids)}
        pq, sq, rq, n = 0.0, 0.0, 0.0, 0
        per_class = {}
        for label, info in categories.items():
            if isthing is not None and bool(info["isthing"]) != isthing:
                continue
            i = row[label]
            iou, tp, fp, fn = float(self.iou[i]), int(self.tp[i]), int(self.fp[i]), int(self.fn[i])
            if tp + fp + fn == 0:
                per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denominator = tp + 0.5 * fp + 0.5 * fn
            pq_class, rq_class = iou / denominator, tp / denominator
            sq_class = iou / tp if tp != 0 else 0.0
            per_class[label] = {"pq": pq_class, "sq": sq_class, "rq": rq_class}
            pq, sq, rq = pq + pq_class, sq + sq_class, rq + rq_class
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def results(self, categories: Mapping[int, Mapping[str, Any]]) -> Dict[str, Any]:
        """panopticapi's return value: "All", "Things", "Stuff" and "per_class" (of "All")."""
        results: Dict[str, Any] = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            results[name], per_class = self.pq_average(categories, isthing)
            if name == "All":
                results["per_class"] = per_class
        return results


class _IdIndexer(threading.local):
    """
    Maps segment ids to compact indices through a lookup table kept per thread (ids are < 2**24;
    the table grows to the largest id seen and is cleared after each use).
    """

    def __init__(self):
        self.lut = np.zeros(1 << 16, dtype=np.int32)

    def __call__(self, id_map: np.ndarray, segment_ids: np.ndarray, scale: int = 1) -> np.ndarray:
        """
        Index map times ``scale``: 0 = id not in ``segment_ids`` (and not VOID), 1 = VOID,
        2 + i = segment i.
        """
        largest = int(id_map.max()) if id_map.size else 0
        if id_map.size and id_map.min() < 0:
            raise ValueError("segment ids must be non-negative (0 is VOID)")
        if len(segment_ids):
            largest = max(largest, int(segment_ids.max()))
        if largest >= OFFSET:
            raise ValueError(f"segment ids must be < 2**24 (RGB-encodable), got {largest}")
        if largest >= len(self.lut):
            self.lut = np.zeros(1 << int(largest).bit_length(), dtype=np.int32)
        lut = self.lut
        lut[VOID] = scale
        lut[segment_ids] = np.arange(2, 2 + len(segment_ids), dtype=np.int32) * scale
        try:
            return lut[id_map]
        finally:
            lut[VOID] = 0
            lut[segment_ids] = 0


_indexer = _IdIndexer()


def segment_index_map(id_map: np.ndarray, segment_ids: np.ndarray, scale: int = 1) -> np.ndarray:
    """
    (H, W) int32 map of compact segment indices, times ``scale``: 0 = an id not in
    ``segment_ids`` (and not VOID), 1 = VOID (id 0), 2 + i = ``segment_ids[i]``.

    Args:
        id_map (ndarray): (H, W) non-negative integer segment ids, < 2**24.
        segment_ids (ndarray): distinct positive ids.
        scale (int): multiplier of the indices (to add two maps into one joint index).
    """
    return _indexer(id_map, np.asarray(segment_ids, dtype=np.int64), scale)


def int_field(segment: Any, key: str, what: str, image: str) -> int:
    """``segment[key]`` as an int; PanopticFormatError naming the image, the segment and the key
    when the segment is not an object, the key is missing or its value is not an integer (a
    float such as 1.0 or 1.5, a string or a bool is refused rather than truncated)."""
    if not isinstance(segment, Mapping):
        raise PanopticFormatError(
            f"{image}: {what} segments_info holds {segment!r}; expected objects with 'id' and "
            "'category_id'"
        )
    if key not in segment:
        raise PanopticFormatError(
            f"{image}: a {what} segment has no {key!r} ({dict(segment)}); expected an integer"
        )
    value = segment[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise PanopticFormatError(
            f"{image}: {what} segment {segment.get('id')!r} has {key} {value!r} "
            f"({type(value).__name__}); expected an integer"
        )
    return int(value)


def _segment_ids(segments: Sequence[Mapping[str, Any]], what: str, image: str) -> np.ndarray:
    if not isinstance(segments, (list, tuple)):
        raise PanopticFormatError(
            f"{image}: {what} segments_info is {type(segments).__name__}; expected a list"
        )
    ids = np.array([int_field(s, "id", what, image) for s in segments], dtype=np.int64)
    if len(ids) and (ids.min() <= VOID or ids.max() >= OFFSET):
        raise PanopticFormatError(
            f"{image}: {what} segment ids must be in [1, 2**24) (0 is VOID), got "
            f"{sorted(set(ids[(ids <= VOID) | (ids >= OFFSET)].tolist()))}"
        )
    if len(set(ids.tolist())) != len(ids):
        values, counts = np.unique(ids, return_counts=True)
        raise PanopticFormatError(
            f"{image}: duplicated {what} segment ids {values[counts > 1].tolist()}"
        )
    return ids


def _checked_ids(id_map: np.ndarray, what: str) -> np.ndarray:
    id_map = np.asarray(id_map)
    if id_map.dtype.kind not in "iub":
        raise ValueError(f"{what} segment ids must be integers, got a {id_map.dtype} map")
    if id_map.size and id_map.min() < 0:
        raise ValueError(f"{what} segment ids must be non-negative (0 is VOID)")
    if id_map.size and id_map.max() >= OFFSET:
        raise ValueError(f"{what} segment ids must be < 2**24 (RGB-encodable), got {id_map.max()}")
    return id_map


def pair_counts(gt_ids: np.ndarray, pred_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """
    Pixel counts of the distinct (gt id, pred id) pairs of two id maps of the same shape.

    The pairs are keyed gt id * 2**24 + pred id (panopticapi's ``OFFSET``), and counted over the
    runs of equal keys in row-major order (panoptic maps are long runs), so that ``np.unique``
    sorts one key per run instead of one per pixel.

    Returns:
        (keys, counts): sorted distinct int64 keys and their int64 pixel counts.
    """
    gt_ids = _checked_ids(gt_ids, "ground-truth")
    pred_ids = _checked_ids(pred_ids, "predicted")
    flat = np.left_shift(gt_ids, 24, dtype=np.int64).ravel()
    np.bitwise_or(flat, pred_ids.ravel(), out=flat, casting="unsafe")  # pred < 2**24: exact
    if not flat.size:
        return flat, flat
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = np.diff(np.append(starts, flat.size))
    keys, run_to_key = np.unique(flat[starts], return_inverse=True)
    return keys, np.bincount(run_to_key, weights=lengths).astype(np.int64)


def _compact_index(ids: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """segment_index_map's indices of a few distinct ids: 0 unknown, 1 VOID, 2 + i segment i."""
    order = np.argsort(segment_ids, kind="stable")
    sorted_ids = segment_ids[order]
    pos = np.searchsorted(sorted_ids, ids)
    found = pos < len(sorted_ids)
    found[found] = sorted_ids[pos[found]] == ids[found]
    index = np.zeros(len(ids), dtype=np.int64)
    index[found] = 2 + order[pos[found]]
    index[ids == VOID] = 1
    return index


def _intersections(
    gt_ids: np.ndarray, g_ids: np.ndarray, pred_ids: np.ndarray, p_ids: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """
    The pixel counts of every (gt index, pred index) pair, a (len(g_ids) + 2, len(p_ids) + 2)
    matrix over the indices of :func:`segment_index_map`, and the sorted predicted ids that are
    neither in ``p_ids`` nor VOID.
    """
    keys, counts = pair_counts(gt_ids, pred_ids)
    num_g, num_p = len(g_ids) + 2, len(p_ids) + 2
    pred_of_pair = keys & (OFFSET - 1)
    pj = _compact_index(pred_of_pair, p_ids)
    gi = _compact_index(keys >> 24, g_ids)
    inter = np.bincount(gi * num_p + pj, weights=counts, minlength=num_g * num_p)
    inter = inter.astype(np.int64).reshape(num_g, num_p)  # exact: counts < 2**53
    unknown = pj == 0
    return inter, (np.unique(pred_of_pair[unknown]) if unknown.any() else pred_of_pair[:0])


def pq_image(
    gt_ids: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: Sequence[Mapping[str, Any]],
    category_ids: Sequence[int],
    image: str = "image",
) -> PQStat:
    """
    PQ statistics of one image.

    Args:
        gt_ids (ndarray): (H, W) integer gt segment ids (``rgb_to_id`` of the gt PNG).
        gt_segments (list[dict]): the gt ``segments_info`` (``id``, ``category_id``,
            ``iscrowd``, ``area``; the pixel count is used when ``area`` is absent).
        pred_ids (ndarray): (H, W) integer predicted segment ids.
        pred_segments (list[dict]): the predicted ``segments_info`` (``id``, ``category_id``).
        category_ids (sequence[int]): the dataset's category ids.
        image (str): how errors name the image (e.g. its id and files).

    Returns:
        PQStat: this image's statistics.

    Raises:
        PanopticFormatError: sizes differ, a predicted id is in the PNG but not in
            ``pred_segments`` or the reverse, a predicted category is unknown, ids repeat.
    """
    if gt_ids.shape != pred_ids.shape:
        raise PanopticFormatError(
            f"{image}: prediction has size {pred_ids.shape}, ground truth {gt_ids.shape}"
        )
    g_ids = _segment_ids(gt_segments, "ground-truth", image)
    p_ids = _segment_ids(pred_segments, "predicted", image)
    inter, unknown = _intersections(gt_ids, g_ids, pred_ids, p_ids)
    return _pq_of_intersections(
        inter, unknown, g_ids, p_ids, gt_segments, pred_segments, category_ids, image
    )


def _pq_of_intersections(
    inter: np.ndarray,
    unknown: np.ndarray,
    g_ids: np.ndarray,
    p_ids: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_segments: Sequence[Mapping[str, Any]],
    category_ids: Sequence[int],
    image: str,
) -> PQStat:
    """PQ statistics from the intersections of every (gt index, pred index) pair (indices of
    segment_index_map) and the predicted ids missing from ``pred_segments``."""
    stat = PQStat(category_ids)
    row_of = {c: i for i, c in enumerate(stat.category_ids)}
    pred_area = inter.sum(axis=0)
    if pred_area[0] > 0:
        raise PanopticFormatError(
            f"{image}: segment ids {unknown.tolist()} are in the predicted PNG but not in its "
            "segments_info"
        )
    pred_area = pred_area[2:]
    if len(p_ids) and pred_area.min() == 0:
        raise PanopticFormatError(
            f"{image}: predicted segment ids {p_ids[pred_area == 0].tolist()} are in "
            "segments_info but not in the PNG"
        )
    pred_cats = [int_field(s, "category_id", "predicted", image) for s in pred_segments]
    pred_row = np.array([row_of.get(c, -1) for c in pred_cats], np.int64)
    if len(pred_row) and pred_row.min() < 0:
        bad = sorted(set(pred_cats) - set(row_of))
        raise PanopticFormatError(
            f"{image}: predicted segments have unknown category ids {bad}; expected ids of the "
            f"ground truth's categories {sorted(row_of)[:20]}"
        )

    gt_cats = [int_field(s, "category_id", "ground-truth", image) for s in gt_segments]
    gt_row = np.array([row_of.get(c, -1) for c in gt_cats], np.int64)
    gt_crowd = np.array([s.get("iscrowd", 0) == 1 for s in gt_segments], dtype=bool)
    gt_area = np.array(
        [s.get("area", a) for s, a in zip(gt_segments, inter[2:].sum(axis=1))], dtype=np.float64
    )
    void_inter = inter[1, 2:]
    pair_inter = inter[2:, 2:]

    # Matching: same category (pred categories are known, so gt_row >= 0), gt not crowd.
    candidate = (gt_row[:, None] == pred_row[None, :]) & ~gt_crowd[:, None] & (pair_inter > 0)
    gi, pj = np.nonzero(candidate)
    union = pred_area[pj] + gt_area[gi] - pair_inter[gi, pj] - void_inter[pj]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = pair_inter[gi, pj] / union
    ok = iou > 0.5
    gi, pj, iou = gi[ok], pj[ok], iou[ok]
    n_cat = len(stat.category_ids)
    stat.tp += np.bincount(gt_row[gi], minlength=n_cat)
    stat.iou += np.bincount(gt_row[gi], weights=iou, minlength=n_cat)

    gt_matched = np.zeros(len(g_ids), dtype=bool)
    gt_matched[gi] = True
    fn = ~gt_matched & ~gt_crowd & (gt_row >= 0)
    stat.fn += np.bincount(gt_row[fn], minlength=n_cat)

    # Unmatched predictions are false positives unless mostly on VOID or on the crowd region
    # of their category (panopticapi keeps the last crowd segment listed per category).
    crowd_of_row = {}
    for i in np.nonzero(gt_crowd)[0]:
        crowd_of_row[int(gt_row[i])] = int(i)
    pred_matched = np.zeros(len(p_ids), dtype=bool)
    pred_matched[pj] = True
    ignored = void_inter.astype(np.float64)
    if crowd_of_row:
        crowd_index = np.array([crowd_of_row.get(int(r), -1) for r in pred_row], np.int64)
        has_crowd = crowd_index >= 0
        ignored[has_crowd] += pair_inter[crowd_index[has_crowd], np.nonzero(has_crowd)[0]]
    fp = ~pred_matched & ~(ignored / np.maximum(pred_area, 1) > 0.5)
    stat.fp += np.bincount(pred_row[fp], minlength=n_cat)
    return stat
