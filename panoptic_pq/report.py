"""
An HTML evaluation report of COCO-format panoptic predictions, to look at instead of reading:

- PQ / SQ / RQ per class, as bar charts (things and stuff apart) and a table;
- where the errors come from: false positives and false negatives by class, by segment size
  (COCO's small < 32^2 <= medium < 96^2 <= large pixels) and by cause, and which classes are
  taken for which (a confusion table);
- a gallery of the images with the lowest PQ: the image, the ground truth and the prediction side
  by side, each class in the color detectron2's ``Visualizer`` gives it.

    from panoptic_pq.report import write_panoptic_report
    write_panoptic_report("report/", "panoptic_val2017.json", "panoptic_val2017",
                          "val2017", "predictions.json", "predictions")

or ``panoptic-pq ... --report DIR``, or after ``train_net.py --eval-only`` with
:func:`panoptic_ext.evaluation.report.write_report_for_dataset`. The page (``DIR/index.html``)
opens from disk: inline CSS, no script, no network; its pictures are PNG / JPEG files in
``DIR/images/``. ``DIR/report.json`` holds the numbers.

The PQ numbers are the project's evaluator's (``pq_compute``): each image is matched with
:func:`~panoptic_pq.segment_matching.pq_image` and the statistics are summed in the
ground truth's order. The error analysis matches segments with the same rules (panopticapi's).

This package imports neither torch nor detectron2 (numpy, Pillow and matplotlib); the figures and
the error analysis are in :mod:`panoptic_pq.report_figures`;
:func:`panoptic_ext.evaluation.report.write_report_for_dataset` reads a detectron2 dataset's
metadata.
"""

import html
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .report_figures import (
    _CSS,
    FN_CAUSES,
    FP_CAUSES,
    SECTIONS,
    SIZE_RANGES,
    _analyse_image,
    _bar_chart,
    _confusion_chart,
    _fit,
    _img,
    _json_keys,
    _overlay,
    _pct,
    _read_image,
    _rel,
    _stacked_chart,
    _strip_json,
    _swatch,
    _table,
    default_category_colors,
)

__all__ = ["write_panoptic_report"]

logger = logging.getLogger(__name__)


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
    from .json_checks import categories_by_id, load_panoptic_json_file, pair_annotations
    from .segment_matching import PQStat

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
    from .panoptic_files import read_panoptic_png

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
