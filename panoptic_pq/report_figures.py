"""
The pieces of the HTML evaluation report (:mod:`panoptic_pq.report`): class colors (detectron2's
palette), each segment's error cause and size, gallery overlays, charts and HTML fragments.
numpy, Pillow and matplotlib only.
"""

import html
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from .segment_matching import OFFSET, pair_counts, pq_image

__all__ = ["SIZE_RANGES", "colors_from_metadata", "default_category_colors"]

logger = logging.getLogger(__name__)

# COCO's area ranges (pixels): small < 32^2 <= medium < 96^2 <= large.
SIZE_RANGES: Tuple[Tuple[str, float, float], ...] = (
    ("small", 0, 32**2),
    ("medium", 32**2, 96**2),
    ("large", 96**2, math.inf),
)
FN_CAUSES = ("missed", "wrong class", "poorly segmented")
FP_CAUSES = ("nothing there", "wrong class", "poorly segmented or duplicate")
SECTIONS = ("summary", "per-class", "errors", "confusion", "gallery")
_GALLERY_WIDTH = 360  # pixels of the long side of a gallery picture


# ---- colors ------------------------------------------------------------------------------------
def _palette() -> np.ndarray:
    """A fixed palette as (N, 3) uint8 RGB (matplotlib's tab20) for categories without a color:
    detectron2's ``Visualizer`` draws those in random colors, and importing detectron2 here would
    load torch into ``panoptic-pq``."""
    from matplotlib import colormaps

    return (np.asarray(colormaps["tab20"].colors) * 255).astype(np.uint8)


def default_category_colors(categories: Sequence[Mapping[str, Any]]) -> Dict[int, Tuple[int, ...]]:
    """
    One RGB color per category id: the category's ``"color"`` when the categories have one
    (COCO's panoptic categories do; detectron2's builtin ``thing_colors`` / ``stuff_colors``
    are these), else a fixed palette, the k-th category taking the k-th color.
    """
    palette = _palette()
    colors = {}
    for k, cat in enumerate(categories):
        color = cat.get("color")
        if not (isinstance(color, (list, tuple)) and len(color) == 3):
            color = palette[k % len(palette)]
        colors[int(cat["id"])] = tuple(int(c) for c in color)
    return colors


def colors_from_metadata(metadata: Any) -> Dict[int, Tuple[int, ...]]:
    """
    The colors detectron2's ``Visualizer`` draws a panoptic dataset's classes in: its metadata's
    ``thing_colors`` / ``stuff_colors`` (indexed by contiguous id), keyed by the dataset's
    category ids (``thing/stuff_dataset_id_to_contiguous_id``). Empty when the metadata has no
    colors (the Visualizer then draws random ones; the report uses :func:`default_category_colors`).
    """
    colors = {}
    for kind in ("thing", "stuff"):
        table = getattr(metadata, f"{kind}_colors", None)
        mapping = getattr(metadata, f"{kind}_dataset_id_to_contiguous_id", None)
        if not table or not mapping:
            continue
        for dataset_id, contiguous in mapping.items():
            if contiguous < len(table):
                colors[int(dataset_id)] = tuple(int(c) for c in table[contiguous])
    return colors


# ---- matching ----------------------------------------------------------------------------------
def _size_of(area: float) -> str:
    for name, low, high in SIZE_RANGES:
        if low <= area < high:
            return name
    return SIZE_RANGES[-1][0]


def _segment_errors(
    gt_ids: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: Sequence[Mapping[str, Any]],
    category_ids: Sequence[int],
) -> List[Dict[str, Any]]:
    """
    The false negatives and false positives of one image, segment by segment, with panopticapi's
    matching rules (same as ``pq_image``): each {"kind": "fn" / "fp", "category_id", "area",
    "size", "cause", "taken_for" (fn: the class of the prediction covering most of it, when that
    covers more than half of it and is of another class)}.
    """
    keys, counts = pair_counts(gt_ids, pred_ids)
    inter: Dict[Tuple[int, int], int] = {
        (int(k) // OFFSET, int(k) % OFFSET): int(c) for k, c in zip(keys, counts)
    }
    known = set(category_ids)
    gt = {int(s["id"]): s for s in gt_segments}
    pred = {int(s["id"]): s for s in pred_segments}
    pred_area: Dict[int, int] = {}
    gt_pixels: Dict[int, int] = {}
    for (g, p), n in inter.items():
        pred_area[p] = pred_area.get(p, 0) + n
        gt_pixels[g] = gt_pixels.get(g, 0) + n
    gt_area = {g: float(s.get("area", gt_pixels.get(g, 0))) for g, s in gt.items()}
    by_gt: Dict[int, List[Tuple[int, int]]] = {}
    by_pred: Dict[int, List[Tuple[int, int]]] = {}
    for (g, p), n in inter.items():
        by_gt.setdefault(g, []).append((p, n))
        by_pred.setdefault(p, []).append((g, n))

    def iou(g: int, p: int, n: int) -> float:
        union = pred_area[p] + gt_area[g] - n - inter.get((0, p), 0)
        return n / union if union > 0 else 0.0

    gt_matched, pred_matched = set(), set()
    for (g, p), n in inter.items():
        if g not in gt or p not in pred or gt[g].get("iscrowd", 0) == 1:
            continue
        if gt[g]["category_id"] == pred[p]["category_id"] and iou(g, p, n) > 0.5:
            gt_matched.add(g)
            pred_matched.add(p)
    errors: List[Dict[str, Any]] = []
    crowd_of: Dict[int, int] = {}
    for g, seg in gt.items():
        if g in gt_matched:
            continue
        if seg.get("iscrowd", 0) == 1:
            crowd_of[seg["category_id"]] = g
            continue
        cat = seg["category_id"]
        if cat not in known:  # not counted by the evaluator either
            continue
        overlaps = [(p, n) for p, n in by_gt.get(g, []) if p in pred]
        best = max(overlaps, key=lambda x: x[1], default=None)
        taken_for = None
        if best is not None and best[1] > 0.5 * gt_area[g] and pred[best[0]]["category_id"] != cat:
            taken_for = pred[best[0]]["category_id"]
        if taken_for is not None:
            cause = "wrong class"
        elif any(pred[p]["category_id"] == cat for p, _ in overlaps):
            cause = "poorly segmented"
        else:
            cause = "missed"
        errors.append(
            {
                "kind": "fn",
                "category_id": cat,
                "area": gt_area[g],
                "size": _size_of(gt_area[g]),
                "cause": cause,
                "taken_for": taken_for,
            }
        )
    for p, seg in pred.items():
        if p in pred_matched or p not in pred_area:
            continue
        cat = seg["category_id"]
        ignored = inter.get((0, p), 0)
        if cat in crowd_of:
            ignored += inter.get((crowd_of[cat], p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        overlaps = [(g, n) for g, n in by_pred.get(p, []) if g in gt]
        best = max(overlaps, key=lambda x: x[1], default=None)
        if best is not None and best[1] > 0.5 * pred_area[p] and gt[best[0]]["category_id"] != cat:
            cause = "wrong class"
        elif any(gt[g]["category_id"] == cat for g, _ in overlaps):
            cause = "poorly segmented or duplicate"
        else:
            cause = "nothing there"
        errors.append(
            {
                "kind": "fp",
                "category_id": cat,
                "area": float(pred_area[p]),
                "size": _size_of(pred_area[p]),
                "cause": cause,
                "taken_for": None,
            }
        )
    return errors


def _analyse_image(pair, gt_folder: str, pred_folder: str, category_ids: Sequence[int]):
    from .panoptic_files import read_panoptic_png

    gt_ann, pred_ann = pair
    gt_file = os.path.join(gt_folder, gt_ann["file_name"])
    pred_file = os.path.join(pred_folder, pred_ann["file_name"])
    name = f"image {gt_ann['image_id']!r} (gt {gt_file}, prediction {pred_file})"
    if not os.path.isfile(pred_file):
        raise FileNotFoundError(f"{name}: the predicted PNG {pred_file} does not exist")
    gt_ids, pred_ids = read_panoptic_png(gt_file), read_panoptic_png(pred_file)
    stat = pq_image(
        gt_ids, gt_ann["segments_info"], pred_ids, pred_ann["segments_info"], category_ids, name
    )
    errors = _segment_errors(
        gt_ids, gt_ann["segments_info"], pred_ids, pred_ann["segments_info"], category_ids
    )
    return stat, errors


# ---- pictures ----------------------------------------------------------------------------------
def _overlay(
    image: Optional[np.ndarray],
    ids: np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    colors: Mapping[int, Tuple[int, ...]],
) -> np.ndarray:
    """(H, W, 3) uint8: each segment in its class color over the image (alpha 0.6), segment
    boundaries in white, VOID (and unlisted ids) darkened."""
    h, w = ids.shape
    base = np.full((h, w, 3), 128, np.uint8) if image is None else image
    color_of_id = {int(s["id"]): colors.get(int(s["category_id"]), (0, 0, 0)) for s in segments}
    seg_ids = np.array(sorted(color_of_id), dtype=np.int64)
    if len(seg_ids):
        pos = np.clip(np.searchsorted(seg_ids, ids), 0, len(seg_ids) - 1)
        known = seg_ids[pos] == ids
        table = np.array([color_of_id[int(i)] for i in seg_ids], np.float32)
        color = table[pos]
    else:
        known = np.zeros((h, w), bool)
        color = np.zeros((h, w, 3), np.float32)
    out = base.astype(np.float32) * 0.4
    out = np.where(known[..., None], out + 0.6 * color, base.astype(np.float32) * 0.35)
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    out[edge] = 255
    return np.clip(out, 0, 255).astype(np.uint8)


def _fit(picture: np.ndarray, long_side: int = _GALLERY_WIDTH) -> Image.Image:
    img = Image.fromarray(picture)
    scale = long_side / max(img.size)
    if scale < 1:
        img = img.resize(
            (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
            Image.NEAREST,
        )
    return img


def _save_figure(fig: Figure, path: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    return path


def _bar_chart(path: str, title: str, names: List[str], rows: List[Mapping[str, float]]) -> str:
    """Horizontal grouped bars of PQ, SQ, RQ (in %) per class, best class on top."""
    n = max(len(names), 1)
    fig = Figure(figsize=(8, 1.2 + 0.32 * n))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))[::-1]
    for k, (metric, color) in enumerate((("pq", "#3b6ea5"), ("sq", "#8fb8de"), ("rq", "#f2a541"))):
        values = [100 * r[metric] for r in rows]
        ax.barh(y + (1 - k) * 0.27, values, height=0.27, color=color, label=metric.upper())
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("%")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save_figure(fig, path)


def _stacked_chart(path: str, title: str, labels: List[str], stacks: Dict[str, List[int]]) -> str:
    fig = Figure(figsize=(8, 1.2 + 0.3 * max(len(labels), 1)))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(labels))[::-1]
    left = np.zeros(len(labels))
    palette = ["#c0392b", "#e67e22", "#f1c40f", "#2980b9", "#8e44ad", "#16a085"]
    for (name, values), color in zip(stacks.items(), palette):
        ax.barh(y, values, left=left, color=color, label=name, height=0.7)
        left += np.asarray(values, dtype=float)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("segments")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save_figure(fig, path)


def _confusion_chart(path: str, names: List[str], matrix: np.ndarray) -> str:
    k = max(len(names), 1)
    fig = Figure(figsize=(2.5 + 0.35 * k, 2 + 0.35 * k))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(matrix, cmap="Reds")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted as")
    ax.set_ylabel("ground-truth class")
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.6)
    return _save_figure(fig, path)


# ---- the page ----------------------------------------------------------------------------------
_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em;
       color: #222; max-width: 1200px; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
.chart { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
.row { display: flex; gap: 1em; flex-wrap: wrap; }
.item { border: 1px solid #ddd; padding: .5em; margin: 0 0 1em; }
.item img { margin-right: .3em; vertical-align: top; }
.swatch { display: inline-block; width: .9em; height: .9em; margin: 0 .2em 0 .6em;
          vertical-align: middle; border: 1px solid #888; }
.note { color: #666; font-size: .9em; }
nav a { margin-right: 1em; }
"""


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], name_cols: int = 1) -> str:
    def cell(tag: str, i: int, value: Any) -> str:
        cls = ' class="name"' if i < name_cols else ""
        return f"<{tag}{cls}>{html.escape(str(value))}</{tag}>"

    out = ["<table><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    return "\n".join(out) + "</table>"


def _img(src: str, alt: str, cls: str = "") -> str:
    cls = f' class="{cls}"' if cls else ""
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}"{cls}>'


def _swatch(color: Sequence[int]) -> str:
    return f'<span class="swatch" style="background: rgb{tuple(int(c) for c in color)}"></span>'


def _json_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_keys(v) for v in value]
    return value


def _strip_json(json_file: str) -> str:
    return json_file[: -len(".json")] if json_file.endswith(".json") else json_file


def _rel(path: str, output_dir: str) -> str:
    return os.path.relpath(path, output_dir).replace(os.sep, "/")


def _read_image(
    image_folder: Optional[str], file_name: Optional[str], shape: Tuple[int, int]
) -> Tuple[Optional[np.ndarray], str]:
    """The RGB image of a gallery entry, or None and why (shown in the caption)."""
    if not image_folder or not file_name:
        return None, ""
    path = os.path.join(image_folder, file_name)
    try:
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as e:
        return None, f" (image {path} not shown: {e})"
    if image.shape[:2] != tuple(shape):
        return None, f" (image {path} is {image.shape[1]}x{image.shape[0]}, not the PNG's size)"
    return image, ""
