"""Data benchmarks: on-the-fly panoptic targets vs detectron2's mapper on prepared files, and
the synthetic dataset's generation time.

``python benchmarks/bench_data.py [--quick]`` prints the rows as JSON.

- "data_mapper": PanopticFPNDatasetMapper reading a COCO panoptic PNG and making instances and
  the semantic map on the fly, against detectron2's DatasetMapper on the same images in the
  "separated" form that detectron2 trains on (RLE instance annotations + a semantic PNG, the
  files that ``prepare_panoptic_fpn.py`` and an instances JSON provide). Same augmentations.
- "synthetic_generation": seconds to generate the default synthetic dataset (300 + 50 images).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
from common import make_row, median, time_interleaved
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.structures import BoxMode
from PIL import Image

from panoptic_ext import add_panoptic_ext_config
from panoptic_ext.data import (
    SYNTHETIC_CATEGORIES,
    PanopticFPNDatasetMapper,
    generate_synthetic_panoptic,
    load_panoptic_json,
    metadata_from_categories,
    panoptic_targets,
    rgb_to_id,
)
from panoptic_ext.data.class_layout import PanopticClassLayout


def _separated_records(records, layout, instances_json, folder):
    """The same images as detectron2 "separated" records (written once, not timed)."""
    with open(instances_json) as f:
        annos = json.load(f)["annotations"]
    by_image = {}
    for a in annos:
        by_image.setdefault(a["image_id"], []).append(a)
    thing_map = {d: k for k, d in enumerate(layout.thing_dataset_ids)}
    out = []
    for r in records:
        pan = rgb_to_id(np.asarray(Image.open(r["pan_seg_file_name"])))
        sem = panoptic_targets(pan, r["segments_info"], layout).sem_seg.astype(np.uint8)
        sem_file = os.path.join(folder, os.path.basename(r["pan_seg_file_name"]))
        Image.fromarray(sem).save(sem_file)
        objs = [
            {
                "bbox": a["bbox"],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": thing_map[a["category_id"]],
                "segmentation": a["segmentation"],
                "iscrowd": a["iscrowd"],
            }
            for a in by_image.get(r["image_id"], [])
        ]
        out.append({**{k: r[k] for k in ("file_name", "image_id", "height", "width")},
                    "sem_seg_file_name": sem_file, "annotations": objs})  # fmt: skip
    return out


def run(quick: bool = False):
    rows = []
    num = 10 if quick else 40
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = generate_synthetic_panoptic(tmp, num_train=num, num_val=1)["train"]
        small_s = time.perf_counter() - start
        meta = metadata_from_categories(SYNTHETIC_CATEGORIES)
        layout = PanopticClassLayout.from_metadata(SimpleNamespace(**meta), "merged")
        records = load_panoptic_json(
            paths["panoptic_json"], paths["image_root"], paths["panoptic_root"], meta
        )
        separated = _separated_records(records, layout, paths["instances_json"], tmp)
        cfg = get_cfg()
        add_panoptic_ext_config(cfg)
        cfg.INPUT.MASK_FORMAT, cfg.MODEL.MASK_ON = "bitmask", True
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (800,), 1333
        ours = PanopticFPNDatasetMapper(
            True,
            augmentations=DatasetMapper(cfg, True).augmentations.augs,
            image_format=cfg.INPUT.FORMAT,
            layout=layout,
        )
        ref = DatasetMapper(cfg, True)
        times = time_interleaved(
            {
                "ours": lambda: [ours(r) for r in records],
                "ref": lambda: [ref(r) for r in separated],
            },
            repeats=3 if quick else 5,
        )
        rows.append(
            make_row(
                "data_mapper",
                f"{num} synthetic 256x256 images resized to 800, per image",
                len(times["ours"]),
                "detectron2 DatasetMapper on prepared 'separated' files (RLE + semantic PNG)",
                ours_s=median(times["ours"]) / num,
                reference_s=median(times["ref"]) / num,
                target=1.5,
            )
        )
    if not quick:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate_synthetic_panoptic(tmp)
            gen_s = time.perf_counter() - start
    else:
        gen_s = small_s * 350 / (num + 1)  # extrapolated
    rows.append(
        make_row(
            "synthetic_generation",
            "default synthetic dataset (300 train + 50 val, 256x256)"
            + (" (extrapolated)" if quick else ""),
            1,
            "the issue's bound: 60 s",
            ours_s=gen_s,
            reference_s=60.0,
            target=1.0,
        )
    )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    json.dump(run(quick=args.quick), sys.stdout, indent=1)
    print()
