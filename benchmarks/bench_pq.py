"""
PQ evaluation speed: panoptic_ext's ``pq_compute`` vs panopticapi's code (as ported by
cityscapesscripts, which installs here) and vs hotcoco, on the same generated files.

    python benchmarks/bench_pq.py [--quick] [--images N] [--size 480x640 ...] [--repeats R]

Workloads (written as COCO panoptic files, then timed side by side: interleaved rounds, medians):

- fixed sizes: N random image pairs per size (VOID, crowd, unmatched and tiny segments, random
  24-bit ids as in COCO's ground truth), 480x640 (COCO-like) and 1024x2048 (Cityscapes-like);
- random sizes: 300 pairs of 60-480 x 60-640 pixels with 2% VOID speckle in both maps (many short
  runs: the worst case of the pure path's run-length loops) and 1-12 thing segments.

Variants:

- cityscapesscripts ``pq_compute_single_core`` (one process; panopticapi's per-image code) and
  ``pq_compute_multi_core`` (panopticapi's default: one process per CPU; fixed sizes only);
- ours (the default engine: hotcoco behind this package's JSON checks) and ours with the pure
  engine (Pillow decoding and this package's numpy matcher; the fallback);
- ``hotcoco.panoptic.pq_compute`` itself (Rust; single-threaded).

Every variant must give the same PQ / SQ / RQ (to 1e-9) for the row to count. Targets: ours at
least 10x faster than panopticapi's single-process code and within 2x of hotcoco. The first call
in a fresh process (import of panoptic_ext + first ``pq_compute``) is timed separately, against
panopticapi's time on the same workload.

The first round is a warm-up (lazy imports, file cache). The random workloads come from the
tests' fixtures (tests/pq_fixtures.py; the repository root is put on ``sys.path`` for them).
"""

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from common import make_row, median

from panoptic_ext.evaluation import pq_compute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.append(ROOT)
from tests.pq_fixtures import random_panoptic_pair, write_panoptic_files  # noqa: E402

DEFAULT_SIZES = ((480, 640), (1024, 2048))  # COCO-like and Cityscapes-like
DEFAULT_IMAGES = {(480, 640): 300, (1024, 2048): 30}
RANDOM_SIZES = (0, 0)  # the random-size workload's key in ``sizes``
RANDOM_IMAGES = 300


def generate(root: str, num_images: int, height: int, width: int, seed: int = 0) -> Tuple[str, ...]:
    """Write ``num_images`` random gt / prediction pairs of one size, or of random sizes
    (60-480 x 60-640, 2% VOID speckle, 1-12 things) when ``height`` is 0; returns (gt_json,
    gt_dir, pred_json, pred_dir)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(num_images):
        if height:
            num_things = max(8, int(40 * (height * width / (1024 * 2048)) ** 0.5))
            cases.append(random_panoptic_pair(rng, height, width, num_things=num_things))
        else:
            h, w = int(rng.integers(60, 481)), int(rng.integers(60, 641))
            cases.append(
                random_panoptic_pair(
                    rng, h, w, num_things=int(rng.integers(1, 13)), void_speckle=0.02
                )
            )
    return write_panoptic_files(root, cases)


_FIRST_CALL = """
import sys, time
start = time.perf_counter()
from panoptic_ext.evaluation import pq_compute
imported = time.perf_counter()
pq_compute(*sys.argv[1:5])
print(imported - start, time.perf_counter() - imported)
"""


def first_call(paths: Sequence[str]) -> Tuple[float, float]:
    """(import s, first pq_compute s) in a fresh Python process (default engine)."""
    gt_json, gt_dir, pred_json, pred_dir = paths
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL, gt_json, pred_json, gt_dir, pred_dir],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[-2]), float(out[-1])


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
    name = f"{height}x{width}" if height else "random_sizes"
    paths = generate(os.path.join(root, name), num_images, height, width)
    gen_s = time.perf_counter() - start
    gt_json, gt_dir, pred_json, pred_dir = paths
    import_s, first_s = first_call(paths)  # before anything in this process touches the files
    cs_single, cs_multi = _cityscapes_variants(paths)
    variants = {
        "cityscapesscripts_1proc": cs_single,
        "ours_pure": lambda: pq_compute(gt_json, pred_json, gt_dir, pred_dir, engine="pure"),
        "ours": lambda: pq_compute(gt_json, pred_json, gt_dir, pred_dir),
    }
    if height:
        variants["cityscapesscripts_multiproc"] = cs_multi
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
    workload = (
        f"{num_images} pairs {height}x{width}"
        if height
        else f"{num_images} pairs of random sizes 60-480 x 60-640, 2% void speckle"
    )
    common = {
        "identical": identical,
        "pq": round(100 * ref["All"]["pq"], 3),
        "cpus": os.cpu_count(),
        "generate_s": round(gen_s, 2),
        "ours_pure_s": med["ours_pure"],
    }
    panopticapi = "cityscapesscripts pq_compute_single_core (panopticapi code, 1 process)"
    rows = [
        make_row(
            "pq",
            workload,
            repeats,
            panopticapi,
            ours_s=med["ours"],
            reference_s=med["cityscapesscripts_1proc"],
            # 10x on the fixed sizes; on small speckled images hotcoco itself is only ~9x
            target=0.1 if height else None,
            ratio_pure=med["ours_pure"] / med["cityscapesscripts_1proc"],
            **common,
        ),
        make_row(
            "pq",
            workload + ", first call in a fresh process",
            1,
            panopticapi + ", warm",
            ours_s=first_s,
            reference_s=med["cityscapesscripts_1proc"],
            target=1.0,
            import_s=import_s,
            ratio_with_import=(import_s + first_s) / med["cityscapesscripts_1proc"],
            **common,
        ),
    ]
    if "cityscapesscripts_multiproc" in med:
        rows.append(
            make_row(
                "pq",
                workload,
                repeats,
                "cityscapesscripts pq_compute_multi_core (panopticapi default, 1 process per CPU)",
                ours_s=med["ours"],
                reference_s=med["cityscapesscripts_multiproc"],
                **common,
            )
        )
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
                ratio_pure=med["ours_pure"] / med["hotcoco"],
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
        sizes (list[(int, int)]): image sizes; (0, 0) = the random-size workload; default
            480x640, 1024x2048 and (0, 0).
        num_images (int): pairs per size; default 300 (480x640), 30 (1024x2048), 300 (random).
        repeats (int): timed rounds; default 3 (1 with ``quick``).
        progress (callable): called with the rows of each size as soon as they are measured.
    """
    if quick:
        sizes = sizes or ((120, 160), RANDOM_SIZES)
        num_images = num_images or 12
    sizes = sizes or DEFAULT_SIZES + (RANDOM_SIZES,)
    repeats = repeats or (1 if quick else 3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_pq_") as root:
        for h, w in sizes:
            n = num_images or DEFAULT_IMAGES.get((h, w), RANDOM_IMAGES if h == 0 else 100)
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
        if "ratio_pure" in r:
            print(
                f"{'':24s}   ours with the pure engine: {r['ours_pure_s']:.2f}s, ratio "
                f"{r['ratio_pure']:.3f}; identical results: {r['identical']}, PQ {r['pq']}"
            )
        if "import_s" in r:
            print(
                f"{'':24s}   import of panoptic_ext before it: {r['import_s']:.2f}s; with it, "
                f"ratio {r['ratio_with_import']:.3f}"
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
