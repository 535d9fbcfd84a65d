"""
An HTML evaluation report of COCO-format panoptic predictions, to look at instead of reading:

- PQ / SQ / RQ per class, as bar charts (things and stuff apart) and a table;
- where the errors come from: false positives and false negatives by class, by segment size
  (COCO's small < 32^2 <= medium < 96^2 <= large pixels) and by cause, and which classes are
  taken for which (a confusion table);
- a gallery of the images with the lowest PQ: the image, the ground truth and the prediction side
  by side, each class in the color detectron2's ``Visualizer`` gives it.

    from panoptic_ext.evaluation.report import write_panoptic_report
    write_panoptic_report("report/", "panoptic_val2017.json", "panoptic_val2017",
                          "val2017", "predictions.json", "predictions")

or ``panoptic-pq ... --report DIR``, or after ``train_net.py --eval-only`` with
:func:`write_report_for_dataset`. The page (``DIR/index.html``) opens from disk: inline CSS, no
script, no network; its pictures are PNG / JPEG files in ``DIR/images/``. ``DIR/report.json``
holds the numbers.

The PQ numbers are the project's evaluator's (``pq_compute``): each image is matched with
:func:`~panoptic_pq.segment_matching.pq_image` and the statistics are summed in the
ground truth's order. The error analysis matches segments with the same rules (panopticapi's).

This module imports neither torch nor detectron2 at import time (only numpy, Pillow and
matplotlib); :func:`write_report_for_dataset` reads detectron2's catalog when called.
"""

import html
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

__all__ = [
    "SIZE_RANGES",
    "colors_from_metadata",
    "default_category_colors",
    "write_panoptic_report",
    "write_report_for_dataset",
]

logger = logging.getLogger(__name__)

OFFSET = 256 * 256 * 256
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
    """detectron2's color list (``detectron2.utils.colormap``, what ``random_color`` draws
    from) as (N, 3) uint8 RGB; matplotlib's tab20 where detectron2 is not installed."""
    try:
        from detectron2.utils.colormap import colormap

        return np.asarray(colormap(rgb=True, maximum=255)).astype(np.uint8)
    except ImportError:
        from matplotlib import colormaps

        return (np.asarray(colormaps["tab20"].colors) * 255).astype(np.uint8)


def default_category_colors(categories: Sequence[Mapping[str, Any]]) -> Dict[int, Tuple[int, ...]]:
    """
    One RGB color per category id: the category's ``"color"`` when the categories have one
    (COCO's panoptic categories do; detectron2's builtin ``thing_colors`` / ``stuff_colors``
    are these), else detectron2's palette, the k-th category taking the k-th color.
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
    keys, counts = np.unique(
        gt_ids.astype(np.int64) * OFFSET + pred_ids.astype(np.int64), return_counts=True
    )
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
    from panoptic_pq.panoptic_files import read_panoptic_png
    from panoptic_pq.segment_matching import pq_image

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


def write_panoptic_report(
    output_dir: str,
    gt_json_file: str,
    gt_folder: Optional[str],
    image_folder: Optional[str],
    pred_json_file: str,
    pred_folder: Optional[str] = None,
    *,
    colors: Optional[Mapping[int, Sequence[int]]] = None,
    num_worst: int = 12,
    title: Optional[str] = None,
    num_workers: Optional[int] = None,
) -> Dict[str, Any]:
    """
    Write the report of COCO panoptic predictions (``DIR/index.html``, its pictures in
    ``DIR/images/`` and the numbers in ``DIR/report.json``).

    Args:
        output_dir (str): the report's folder (created; earlier report files are replaced).
        gt_json_file (str): COCO panoptic ground-truth JSON ("images", "annotations",
            "categories").
        gt_folder (str): its PNG folder; None: the JSON path without ".json" (as ``pq_compute``).
        image_folder (str): the images (``images[].file_name`` of the gt JSON); None or missing
            files: the gallery shows the segmentations over gray.
        pred_json_file (str): the prediction JSON ("annotations"), as ``panoptic-pq`` reads it.
        pred_folder (str): its PNG folder; None: the JSON path without ".json".
        colors (dict): category id -> RGB; default: :func:`default_category_colors` (for a
            detectron2 dataset, pass :func:`colors_from_metadata` of its metadata).
        num_worst (int): images in the gallery (lowest PQ first).
        title (str): the page's title.
        num_workers (int): threads reading and matching images (default: number of CPUs).

    Returns:
        dict: "results" (``pq_compute``'s return value, the same numbers), "html" (the page),
        "worst" (image ids of the gallery), "counts" (tp / fp / fn per category id), "errors"
        (each false negative and false positive: kind, category_id, area, size, cause,
        taken_for).

    Raises:
        FileNotFoundError, ValueError: as ``pq_compute`` (naming the file, image or key).
    """
    from panoptic_pq.json_checks import categories_by_id, load_panoptic_json_file, pair_annotations
    from panoptic_pq.segment_matching import PQStat

    gt_folder = gt_folder or _strip_json(gt_json_file)
    pred_folder = pred_folder or _strip_json(pred_json_file)
    for folder, what in ((gt_folder, "ground truth"), (pred_folder, "predicted")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"folder {folder} with {what} segmentations doesn't exist")
    gt_json = load_panoptic_json_file(gt_json_file, "ground-truth")
    pred_json = load_panoptic_json_file(pred_json_file, "prediction")
    categories = categories_by_id(gt_json["categories"], f"ground-truth JSON file {gt_json_file}")
    category_ids = list(categories)
    pairs = pair_annotations(gt_json["annotations"], pred_json["annotations"], check=False)
    palette = default_category_colors(list(categories.values()))
    palette.update({int(k): tuple(int(c) for c in v) for k, v in (colors or {}).items()})

    with ThreadPoolExecutor(max_workers=num_workers or os.cpu_count() or 1) as pool:
        analysed = list(
            pool.map(lambda p: _analyse_image(p, gt_folder, pred_folder, category_ids), pairs)
        )
    total = PQStat(category_ids)
    for stat, _ in analysed:  # in the gt order, as pq_compute sums them
        total += stat
    results = total.results(categories)

    images_dir = os.path.join(output_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    for name in os.listdir(images_dir):  # an earlier report's pictures
        if name.startswith(("chart_", "gallery_")):
            os.remove(os.path.join(images_dir, name))

    names = {c: str(info.get("name", c)) for c, info in categories.items()}
    row_of = {c: i for i, c in enumerate(total.category_ids)}
    counts = {
        c: {
            "tp": int(total.tp[row_of[c]]),
            "fp": int(total.fp[row_of[c]]),
            "fn": int(total.fn[row_of[c]]),
        }
        for c in category_ids
    }
    errors = [e for _, image_errors in analysed for e in image_errors]
    body: List[str] = []
    charts: Dict[str, str] = {}

    # ---- summary
    groups = [
        (g, _pct(results[g]["pq"]), _pct(results[g]["sq"]), _pct(results[g]["rq"]), results[g]["n"])
        for g in ("All", "Things", "Stuff")
    ]
    n_fp = sum(1 for e in errors if e["kind"] == "fp")
    n_fn = sum(1 for e in errors if e["kind"] == "fn")
    body.append('<h2 id="summary">Summary</h2>')
    body.append(
        f"<p>{len(pairs)} images, {len(categories)} categories; ground truth "
        f"<code>{html.escape(gt_json_file)}</code>, predictions "
        f"<code>{html.escape(pred_json_file)}</code>. {int(total.tp.sum())} matched segments, "
        f"{n_fp} false positives, {n_fn} false negatives.</p>"
    )
    body.append(_table(["", "PQ", "SQ", "RQ", "categories"], groups))

    # ---- per class
    body.append('<h2 id="per-class">PQ, SQ and RQ per class</h2>')
    body.append(
        '<p class="note">In %; classes without any segment in the ground truth or the '
        "predictions are left out (they do not count in the averages).</p>"
    )
    per_class_rows = []
    for group, isthing in (("Things", True), ("Stuff", False)):
        cats = [
            c
            for c in category_ids
            if bool(categories[c]["isthing"]) == isthing and sum(counts[c].values())
        ]
        cats.sort(key=lambda c: -results["per_class"][c]["pq"])
        if cats:
            path = os.path.join(images_dir, f"chart_pq_{group.lower()}.png")
            _bar_chart(
                path,
                f"{group}: PQ {_pct(results[group]['pq'])} (%)",
                [names[c] for c in cats],
                [results["per_class"][c] for c in cats],
            )
            charts[f"pq_{group.lower()}"] = path
            body.append(f"<h3>{group}</h3>" + _img(_rel(path, output_dir), f"{group}", "chart"))
        else:
            body.append(f"<h3>{group}</h3><p>No {group.lower()} segments.</p>")
        for c in cats:
            r = results["per_class"][c]
            per_class_rows.append(
                [names[c], group.lower(), _pct(r["pq"]), _pct(r["sq"]), _pct(r["rq"])]
                + [counts[c]["tp"], counts[c]["fp"], counts[c]["fn"]]
            )
    body.append(
        _table(["class", "kind", "PQ", "SQ", "RQ", "TP", "FP", "FN"], per_class_rows, name_cols=2)
    )

    # ---- errors
    body.append('<h2 id="errors">Where the errors come from</h2>')
    body.append(
        '<p class="note">False negatives: ground-truth segments no prediction matches (IoU > 0.5, '
        "same class): <i>missed</i> (no prediction of its class on it), <i>wrong class</i> (a "
        "prediction of another class covers more than half of it), <i>poorly segmented</i> (a "
        "prediction of its class overlaps it, IoU &le; 0.5). False positives: predicted segments "
        "matching nothing, other than those mostly on void or crowd regions: <i>nothing there</i>, "
        "<i>wrong class</i> (more than half of it on a segment of another class), <i>poorly "
        "segmented or duplicate</i> (on a segment of its class). Sizes: COCO's small &lt; 32&sup2; "
        "&le; medium &lt; 96&sup2; &le; large pixels.</p>"
    )
    size_names = [s[0] for s in SIZE_RANGES]
    size_rows = []
    for kind, causes, label in (
        ("fn", FN_CAUSES, "false negatives"),
        ("fp", FP_CAUSES, "false positives"),
    ):
        for cause in causes:
            row = [label, cause]
            for size in size_names:
                row.append(
                    sum(
                        1
                        for e in errors
                        if (e["kind"], e["cause"], e["size"]) == (kind, cause, size)
                    )
                )
            size_rows.append(row + [sum(row[2:])])
    path = os.path.join(images_dir, "chart_errors_by_size.png")
    stacks = {}
    for kind, causes, label in (("fn", FN_CAUSES, "FN"), ("fp", FP_CAUSES, "FP")):
        for cause in causes:
            stacks[f"{label}: {cause}"] = [
                sum(1 for e in errors if (e["kind"], e["cause"], e["size"]) == (kind, cause, s))
                for s in size_names
            ]
    _stacked_chart(path, "Errors by segment size", size_names, stacks)
    charts["errors_by_size"] = path
    body.append(
        "<h3>By segment size</h3>" + _img(_rel(path, output_dir), "errors by size", "chart")
    )
    body.append(_table(["", "cause"] + size_names + ["total"], size_rows, name_cols=2))

    by_class = sorted(
        (c for c in category_ids if counts[c]["fp"] + counts[c]["fn"]),
        key=lambda c: -(counts[c]["fp"] + counts[c]["fn"]),
    )
    shown = by_class[:30]
    path = os.path.join(images_dir, "chart_errors_by_class.png")
    _stacked_chart(
        path,
        "Errors by class" + (f" (the {len(shown)} with most errors)" if len(by_class) > 30 else ""),
        [names[c] for c in shown],
        {
            "false negatives": [counts[c]["fn"] for c in shown],
            "false positives": [counts[c]["fp"] for c in shown],
        },
    )
    charts["errors_by_class"] = path
    body.append("<h3>By class</h3>" + _img(_rel(path, output_dir), "errors by class", "chart"))
    class_rows = []
    for c in by_class:
        mine = [e for e in errors if e["category_id"] == c]
        row = [names[c], counts[c]["fn"], counts[c]["fp"]]
        row += [sum(1 for e in mine if e["kind"] == "fn" and e["size"] == s) for s in size_names]
        row += [sum(1 for e in mine if e["kind"] == "fp" and e["size"] == s) for s in size_names]
        class_rows.append(row)
    body.append(
        _table(
            ["class", "FN", "FP"]
            + [f"FN {s}" for s in size_names]
            + [f"FP {s}" for s in size_names],
            class_rows,
        )
    )

    # ---- confusion
    pairs_count: Dict[Tuple[int, int], int] = {}
    for e in errors:
        if e["taken_for"] is not None:
            key = (e["category_id"], e["taken_for"])
            pairs_count[key] = pairs_count.get(key, 0) + 1
    body.append('<h2 id="confusion">Which classes are taken for which</h2>')
    body.append(
        '<p class="note">Ground-truth segments (false negatives) more than half covered by a '
        "prediction of another class.</p>"
    )
    if pairs_count:
        involved: Dict[int, int] = {}
        for (a, b), n in pairs_count.items():
            involved[a] = involved.get(a, 0) + n
            involved[b] = involved.get(b, 0) + n
        top = sorted(involved, key=lambda c: -involved[c])[:20]
        index = {c: i for i, c in enumerate(top)}
        matrix = np.zeros((len(top), len(top)), np.int64)
        for (a, b), n in pairs_count.items():
            if a in index and b in index:
                matrix[index[a], index[b]] += n
        path = os.path.join(images_dir, "chart_confusion.png")
        _confusion_chart(path, [names[c] for c in top], matrix)
        charts["confusion"] = path
        body.append(_img(_rel(path, output_dir), "confusion", "chart"))
        rows = sorted(pairs_count.items(), key=lambda kv: -kv[1])[:50]
        body.append(
            _table(
                ["ground truth", "taken for", "segments"],
                [[names[a], names[b], n] for (a, b), n in rows],
                name_cols=2,
            )
        )
    else:
        body.append("<p>No segment was taken for another class.</p>")

    # ---- gallery
    image_pq = []
    for (gt_ann, _), (stat, image_errors) in zip(pairs, analysed):
        summary, _ = stat.pq_average(categories, None)
        if summary["n"]:
            image_pq.append((summary["pq"], gt_ann["image_id"], stat, image_errors))
    image_pq.sort(key=lambda x: x[0])
    worst = image_pq[: max(int(num_worst), 0)]
    file_of_image = {img["id"]: img.get("file_name") for img in gt_json.get("images", [])}
    pair_of = {gt["image_id"]: (gt, pred) for gt, pred in pairs}
    body.append('<h2 id="gallery">The images with the lowest PQ</h2>')
    body.append(
        f'<p class="note">{len(worst)} of {len(image_pq)} images, lowest PQ first: the image, the '
        "ground truth and the prediction (each class in its color, segment outlines white, void "
        "dark).</p>"
    )
    gallery = []
    from panoptic_pq.panoptic_files import read_panoptic_png

    for rank, (pq, image_id, stat, image_errors) in enumerate(worst, start=1):
        gt_ann, pred_ann = pair_of[image_id]
        gt_ids = read_panoptic_png(os.path.join(gt_folder, gt_ann["file_name"]))
        pred_ids = read_panoptic_png(os.path.join(pred_folder, pred_ann["file_name"]))
        image, note = _read_image(image_folder, file_of_image.get(image_id), gt_ids.shape)
        pictures = {
            "image": image if image is not None else np.full(gt_ids.shape + (3,), 128, np.uint8),
            "gt": _overlay(image, gt_ids, gt_ann["segments_info"], palette),
            "pred": _overlay(image, pred_ids, pred_ann["segments_info"], palette),
        }
        tags = []
        for kind, picture in pictures.items():
            path = os.path.join(images_dir, f"gallery_{rank:03d}_{kind}.jpg")
            _fit(picture).save(path, quality=90)
            tags.append(_img(_rel(path, output_dir), f"image {image_id} {kind}"))
        present = sorted(
            {s["category_id"] for s in gt_ann["segments_info"]}
            | {s["category_id"] for s in pred_ann["segments_info"]}
        )
        legend = "".join(
            _swatch(palette[c]) + html.escape(names.get(c, str(c))) for c in present if c in names
        )
        fn = sum(1 for e in image_errors if e["kind"] == "fn")
        fp = sum(1 for e in image_errors if e["kind"] == "fp")
        caption = (
            f"<b>#{rank}</b> image {html.escape(str(image_id))} "
            f"({html.escape(str(file_of_image.get(image_id) or gt_ann['file_name']))}): "
            f"PQ {_pct(pq)}, {int(stat.tp.sum())} matched, {fn} false negatives, {fp} false "
            f"positives{html.escape(note)}"
        )
        gallery.append(
            f'<div class="item"><p>{caption}</p><div>{"".join(tags)}</div>'
            f'<p class="note">image | ground truth | prediction &mdash; {legend}</p></div>'
        )
    body.extend(gallery or ["<p>No image with segments to show.</p>"])

    heading = title or f"Panoptic evaluation report: {os.path.basename(pred_json_file)}"
    nav = "".join(f'<a href="#{s}">{s.replace("-", " ")}</a>' for s in SECTIONS)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(heading)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(heading)}</h1><nav>{nav}</nav>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    html_path = os.path.join(output_dir, "index.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(page)
    report = {
        "results": results,
        "counts": counts,
        "worst": [{"image_id": image_id, "pq": pq} for pq, image_id, _, _ in worst],
        "errors_by_size": {f"{r[0]}: {r[1]}": dict(zip(size_names, r[2:5])) for r in size_rows},
        "confusion": [
            {"gt": a, "taken_for": b, "segments": n} for (a, b), n in sorted(pairs_count.items())
        ],
    }
    with open(os.path.join(output_dir, "report.json"), "w") as f:
        json.dump(_json_keys(report), f, indent=1)
    logger.info("Wrote the evaluation report %s (%d images)", html_path, len(pairs))
    return {
        "results": results,
        "html": html_path,
        "charts": charts,
        "worst": [image_id for _, image_id, _, _ in worst],
        "counts": counts,
        "errors": errors,
    }


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


def write_report_for_dataset(
    dataset_name: str,
    predictions_dir: str,
    output_dir: str,
    num_worst: int = 12,
) -> Dict[str, Any]:
    """
    The report of a registered panoptic dataset's predictions saved by the project's
    ``PanopticQualityEvaluator`` (``train_net.py --eval-only`` with ``TEST.SAVE_PANOPTIC_PNGS
    True``): ``predictions_dir/predictions.json`` and ``predictions_dir/predictions/*.png``;
    ground truth, images and colors from the dataset's metadata (``panoptic_json``,
    ``panoptic_root``, ``image_root``, ``thing_colors`` / ``stuff_colors``).

    Raises:
        FileNotFoundError: naming the missing file and how to get it.
    """
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get(dataset_name)
    for key in ("panoptic_json", "panoptic_root"):
        if not hasattr(metadata, key):
            raise ValueError(
                f"dataset {dataset_name!r} is not a COCO-format panoptic dataset (its metadata "
                f"has no {key})"
            )
    pred_json = os.path.join(predictions_dir, "predictions.json")
    pred_folder = os.path.join(predictions_dir, "predictions")
    if not os.path.isfile(pred_json) or not os.path.isdir(pred_folder):
        raise FileNotFoundError(
            f"{pred_json} and the PNG folder {pred_folder} are needed for the report: evaluate "
            "with TEST.SAVE_PANOPTIC_PNGS True (train_net.py --eval-only ... "
            "TEST.SAVE_PANOPTIC_PNGS True)"
        )
    return write_panoptic_report(
        output_dir,
        metadata.panoptic_json,
        metadata.panoptic_root,
        getattr(metadata, "image_root", None),
        pred_json,
        pred_folder,
        colors=colors_from_metadata(metadata),
        num_worst=num_worst,
        title=f"Panoptic evaluation report: {dataset_name}",
    )
