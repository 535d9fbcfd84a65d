"""
PQ evaluation speed: panoptic_ext's ``pq_compute`` vs panopticapi's code (as ported by
cityscapesscripts, which installs here) and vs hotcoco, on the same generated files.

    python benchmarks/bench_pq.py [--quick] [--images N] [--size 480x640 ...] [--repeats R]

For each image size, N random image pairs (VOID, crowd, unmatched and tiny segments, random
24-bit ids as in COCO's ground truth) are written as COCO panoptic files, then timed side by
side (interleaved rounds, medians):

- cityscapesscripts ``pq_compute_single_core`` (one process; panopticapi's per-image code);
- cityscapesscripts ``pq_compute_multi_core`` (panopticapi's default: one process per CPU);
- ours with one thread and with the default (one thread per CPU);
- ``hotcoco.panoptic.pq_compute`` (Rust; single-threaded: RAYON_NUM_THREADS changes nothing).

Every variant must give the same PQ / SQ / RQ (to 1e-9) for the row to count. The targets:
ours (default threads) at least 10x faster than panopticapi's single-process code, and within
2x of hotcoco. CPU times of the single-threaded variants are reported too, since the machines
are shared (on a busy 2-core machine the second thread gains nothing).

The first round is a warm-up: it also loads numba's compiled PQ loops from their disk cache
(about 0.5 s once per process; a few seconds the very first time, when they are compiled).
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from common import make_row, median

from panoptic_ext.evaluation import pq_compute
from panoptic_ext.evaluation.testing import random_panoptic_pair, write_panoptic_files

DEFAULT_SIZES = ((480, 640), (1024, 2048))  # COCO-like and Cityscapes-like
DEFAULT_IMAGES = {(480, 640): 300, (1024, 2048): 30}


def generate(root: str, num_images: int, height: int, width: int, seed: int = 0) -> Tuple[str, ...]:
    """Write ``num_images`` random gt / prediction pairs; returns (gt_json, gt_dir, pred_json,
    pred_dir)."""
    rng = np.random.default_rng(seed)
    num_things = max(8, int(40 * (height * width / (1024 * 2048)) ** 0.5))
    cases = [
        random_panoptic_pair(rng, height, width, num_things=num_things) for _ in range(num_images)
    ]
    return write_panoptic_files(root, cases)


def _cityscapes_variants(paths: Sequence[str]):
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs

    gt_json, gt_dir, pred_json, pred_dir = paths
    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pred = {a["image_id"]: a for a in json.load(f)["annotations"]}
    categories = {c["id"]: c for c in gt["categories"]}

    def pairs():  # the port writes "area" into the prediction dicts: fresh copies each run
        return [(a, json.loads(json.dumps(pred[a["image_id"]]))) for a in gt["annotations"]]

    def single():
        with contextlib.redirect_stdout(io.StringIO()):
            stat = cs.pq_compute_single_core(0, pairs(), gt_dir, pred_dir, categories)
        return cs.average_pq(stat, categories)

    def multi():
        with contextlib.redirect_stdout(io.StringIO()):
            stat = cs.pq_compute_multi_core(pairs(), gt_dir, pred_dir, categories)
        return cs.average_pq(stat, categories)

    return single, multi


def _same(a: Dict[str, Any], b: Dict[str, Any], tol: float = 1e-9) -> bool:
    return all(
        abs(a[g][m] - b[g][m]) <= tol
        for g in ("All", "Things", "Stuff")
        for m in ("pq", "sq", "rq")
    )


def bench_size(
    height: int, width: int, num_images: int, repeats: int, root: str
) -> List[Dict[str, Any]]:
    """Rows for one image size."""
    start = time.perf_counter()
    paths = generate(os.path.join(root, f"{height}x{width}"), num_images, height, width)
    gen_s = time.perf_counter() - start
    gt_json, gt_dir, pred_json, pred_dir = paths
    cs_single, cs_multi = _cityscapes_variants(paths)
    variants = {
        "cityscapesscripts_1proc": cs_single,
        "cityscapesscripts_multiproc": cs_multi,
        "ours_1thread": lambda: pq_compute(gt_json, pred_json, gt_dir, pred_dir, num_workers=1),
        "ours": lambda: pq_compute(gt_json, pred_json, gt_dir, pred_dir),
    }
    try:
        import hotcoco.panoptic as hotcoco_panoptic

        def hotcoco_run():
            with contextlib.redirect_stdout(io.StringIO()):
                return hotcoco_panoptic.pq_compute(gt_json, pred_json, gt_dir, pred_dir)

        variants["hotcoco"] = hotcoco_run
    except ImportError:
        pass

    # Interleaved rounds (order alternates), wall and CPU time of each run.
    wall: Dict[str, List[float]] = {n: [] for n in variants}
    cpu: Dict[str, List[float]] = {n: [] for n in variants}
    results: Dict[str, Any] = {}
    names = list(variants)
    for i in range(repeats + 1):  # the first round warms up caches and lazy imports
        for name in names if i % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = variants[name]()
            if i > 0:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    ref = results["cityscapesscripts_1proc"]
    identical = all(_same(ref, r) for r in results.values())
    med = {n: median(v) for n, v in wall.items()}
    workload = f"{num_images} pairs {height}x{width}"
    common = {
        "identical": identical,
        "pq": round(100 * ref["All"]["pq"], 3),
        "cpus": os.cpu_count(),
        "generate_s": round(gen_s, 2),
    }
    rows = [
        make_row(
            "pq",
            workload,
            repeats,
            "cityscapesscripts pq_compute_single_core (panopticapi code, 1 process)",
            ours_s=med["ours"],
            reference_s=med["cityscapesscripts_1proc"],
            target=0.1,
            ours_1thread_s=med["ours_1thread"],
            ratio_1thread=med["ours_1thread"] / med["cityscapesscripts_1proc"],
            cpu_ratio_1thread=median(cpu["ours_1thread"]) / median(cpu["cityscapesscripts_1proc"]),
            **common,
        ),
        make_row(
            "pq",
            workload,
            repeats,
            "cityscapesscripts pq_compute_multi_core (panopticapi default, 1 process per CPU)",
            ours_s=med["ours"],
            reference_s=med["cityscapesscripts_multiproc"],
            **common,
        ),
    ]
    if "hotcoco" in med:
        rows.append(
            make_row(
                "pq",
                workload,
                repeats,
                "hotcoco.panoptic.pq_compute (Rust)",
                ours_s=med["ours"],
                reference_s=med["hotcoco"],
                target=2.0,
                **common,
            )
        )
    return rows


def run(
    quick: bool = False,
    sizes: Optional[Sequence[Tuple[int, int]]] = None,
    num_images: Optional[int] = None,
    repeats: Optional[int] = None,
    progress: Optional[Callable[[List[Dict[str, Any]]], None]] = None,
) -> List[Dict[str, Any]]:
    """
    The benchmark's rows (see the module docstring).

    Args:
        quick (bool): tiny sizes, 1 repeat (smoke test).
        sizes (list[(int, int)]): image sizes; default 480x640 and 1024x2048.
        num_images (int): pairs per size; default 300 (480x640) and 30 (1024x2048).
        repeats (int): timed rounds; default 3 (1 with ``quick``).
        progress (callable): called with the rows of each size as soon as they are measured.
    """
    if quick:
        sizes = sizes or ((120, 160), (256, 512))
        num_images = num_images or 12
    sizes = sizes or DEFAULT_SIZES
    repeats = repeats or (1 if quick else 3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_pq_") as root:
        for h, w in sizes:
            n = num_images or DEFAULT_IMAGES.get((h, w), 100)
            size_rows = bench_size(h, w, n, repeats, root)
            if progress:
                progress(size_rows)
            rows += size_rows
    return rows


def _print_header() -> None:
    print(
        f"{'workload':24s} {'reference':78s} {'ours':>9s} {'ref':>9s} {'ratio':>7s} {'target':>6s}"
    )


def _print_rows(rows: Sequence[Dict[str, Any]]) -> None:
    for r in rows:
        target = "-" if r["target"] is None else f"{r['target']:g}"
        print(
            f"{r['workload']:24s} {r['reference'][:78]:78s} {r['ours_s']:8.2f}s "
            f"{r['reference_s']:8.2f}s {r['ratio']:7.3f} {target:>6s}"
            + ("" if r["met"] is None else ("  met" if r["met"] else "  NOT met"))
        )
        if "ratio_1thread" in r:
            print(
                f"{'':24s}   ours with 1 thread: {r['ours_1thread_s']:.2f}s, ratio "
                f"{r['ratio_1thread']:.3f} (CPU time ratio {r['cpu_ratio_1thread']:.3f}); "
                f"identical results: {r['identical']}, PQ {r['pq']}"
            )
    sys.stdout.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, help="image pairs per size")
    parser.add_argument("--size", action="append", help="HxW (repeatable)")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.size] if args.size else None
    _print_header()
    rows = run(
        quick=args.quick,
        sizes=sizes,
        num_images=args.images,
        repeats=args.repeats,
        progress=_print_rows,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
