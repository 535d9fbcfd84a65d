"""
Run the benchmark suite (``make bench``): print one table, write benchmarks/results.json (and a
Markdown copy of the table, benchmarks/results.md) and the scaling plot benchmarks/scaling.png.

    python benchmarks/run_all.py [--quick] [--only NAME[,NAME...]] [--output FILE]

With ``--only``, the rows of the suites not run are kept from the existing output file (their
run's metadata under ``meta.kept_from``).

Every figure is a ratio of ours to a reference measured side by side in this run.
"""

import argparse
import datetime
import importlib
import inspect
import json
import logging
import os
import platform
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from common import BENCH_DIR, make_row

# (name, module in benchmarks/, candidate entry points returning rows, what it compares)
BENCHMARKS: List[Tuple[str, str, Tuple[str, ...], str]] = [
    # first: the machine's limit, which the inference rows report their share of
    ("limit", "bench_limit", ("run",), "the machine's FP32 / bf16 GFLOP/s (conv, matmul)"),
    ("postprocess", "bench_postprocess", ("run",), "panoptic post-processing vs detectron2"),
    ("inference", "bench_inference", ("run",), "end-to-end inference vs detectron2 PanopticFPN"),
    ("train_step", "bench_train_step", ("run",), "one training step vs detectron2 PanopticFPN"),
    ("pq", "bench_pq", ("run",), "PQ evaluation vs cityscapesscripts and hotcoco"),
    ("flops", "bench_flops", ("run",), "FLOPs and parameters, joint vs separate networks"),
    ("scaling", "bench_scaling", ("run",), "time vs image size and number of detections"),
    ("data", "bench_data", ("run",), "data mapper vs detectron2 DatasetMapper"),
    ("export", "bench_export", ("run",), "ONNX Runtime export vs detectron2 eager PanopticFPN"),
]
NAMES = [b[0] for b in BENCHMARKS]

logger = logging.getLogger("benchmarks")


def _format_value(row: Dict[str, Any], which: str) -> str:
    value = row.get(f"{which}_s") if row.get("unit", "s") == "s" else row.get(f"{which}_value")
    if value is None:
        return "-"
    if row.get("unit", "s") == "s":
        return f"{value:.4f} s" if value < 1 else f"{value:.2f} s"
    return f"{value:.4g} {row['unit']}"


_CORE_KEYS = {
    "suite",
    "benchmark",
    "workload",
    "repeats",
    "reference",
    "unit",
    "ours_s",
    "reference_s",
    "ours_value",
    "reference_value",
    "ratio",
    "target",
    "met",
}


def _notes(row: Dict[str, Any]) -> str:
    parts = []
    for key, value in row.items():
        if key in _CORE_KEYS:
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def table_lines(rows: Sequence[Dict[str, Any]], markdown: bool = False) -> List[str]:
    """
    The rows as an aligned text table (each row's extra fields on an indented line below it),
    or as a Markdown table with a notes column.
    """
    header = ["benchmark", "workload", "rep", "ours", "reference", "ratio", "target", "met"]
    body = []
    for r in rows:
        target = "-" if r.get("target") is None else f"<= {r['target']:g}x"
        met = {True: "yes", False: "NO", None: "-"}[r.get("met")]
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.3f}x"
        reference = f"{_format_value(r, 'reference')} ({r['reference']})"
        cells = [r["benchmark"], r["workload"], str(r["repeats"]), _format_value(r, "ours")]
        body.append((cells + [reference, ratio, target, met], _notes(r)))
    if markdown:
        lines = ["| " + " | ".join(header + ["notes"]) + " |", "|" + "---|" * (len(header) + 1)]
        for cells, notes in body:
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells + [notes]) + " |")
        return lines
    widths = [max(len(x[i]) for x in [header] + [c for c, _ in body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("-" * len(lines[0]))
    for cells, notes in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        if notes:
            lines.append("      " + notes)
    return lines


def print_table(rows: Sequence[Dict[str, Any]]) -> None:
    print("\n".join(table_lines(rows)), flush=True)


def _entry_point(module_name: str, candidates: Sequence[str]) -> Optional[Callable]:
    module = importlib.import_module(module_name)
    for name in candidates:
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


def _call(fn: Callable, quick: bool, options: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Call an entry point with the options it accepts (quick, plot_path, ...)."""
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in dict(quick=quick, **options).items() if k in params}
    rows = fn(**kwargs)
    return [dict(r) for r in rows]


def run_benchmarks(
    names: Sequence[str], quick: bool, options: Dict[str, Any]
) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
    """Run the named benchmarks; a missing or failing one becomes an error entry, not a crash."""
    rows: List[Dict[str, Any]] = []
    errors: List[Dict[str, str]] = []
    for name, module_name, candidates, what in BENCHMARKS:
        if name not in names:
            continue
        path = os.path.join(BENCH_DIR, module_name + ".py")
        start = time.perf_counter()
        print(f"== {name}: {what} ...", flush=True)
        if not os.path.isfile(path):
            errors.append({"benchmark": name, "error": f"missing: {path} does not exist yet"})
            print(f"   MISSING: {path}", flush=True)
            continue
        try:
            fn = _entry_point(module_name, candidates)
            if fn is None:
                raise AttributeError(f"{path} defines none of {', '.join(candidates)}")
            new_rows = _call(fn, quick, options)
        except Exception as e:  # report and go on with the other benchmarks
            errors.append(
                {"benchmark": name, "error": f"{type(e).__name__}: {e}", "traceback": _tb()}
            )
            print(f"   FAILED: {type(e).__name__}: {e}", flush=True)
            continue
        if not new_rows:
            errors.append({"benchmark": name, "error": "produced no rows"})
        for r in new_rows:
            r.setdefault("benchmark", name)
            r["suite"] = name
        rows.extend(new_rows)
        print(f"   {len(new_rows)} rows in {time.perf_counter() - start:.0f} s", flush=True)
    return rows, errors


def _tb() -> str:
    return "".join(traceback.format_exc().splitlines(keepends=True)[-15:])


def _metadata(args: argparse.Namespace, names: Sequence[str], started: float) -> Dict[str, Any]:
    import detectron2

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "command": "python benchmarks/run_all.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "quick": args.quick,
        "benchmarks": list(names),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_end": load,
    }


def _merged(path: str, result: Dict[str, Any], names: Sequence[str]) -> Dict[str, Any]:
    """``result`` plus the rows and errors of the other benchmarks in the results file ``path``,
    in the suite order of BENCHMARKS; the earlier run's metadata goes under meta.kept_from."""
    with open(path) as f:
        old = json.load(f)
    kept = [r for r in old.get("rows", []) if r.get("suite") not in names]
    order = {name: i for i, name in enumerate(NAMES)}
    rows = sorted(kept + result["rows"], key=lambda r: order.get(r.get("suite"), len(order)))
    errors = [e for e in old.get("errors", []) if e.get("benchmark") not in names]
    meta = dict(result["meta"])
    meta["kept_from"] = {k: v for k, v in old.get("meta", {}).items() if k != "kept_from"}
    meta["kept_suites"] = sorted({r.get("suite") for r in kept})
    return {"meta": meta, "rows": rows, "errors": errors + result["errors"]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (smoke test)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated benchmarks to run, of: {', '.join(NAMES)}"
    )
    parser.add_argument("--output", default=None, help="results JSON (default benchmarks/...)")
    parser.add_argument("--plot", default=None, help="scaling plot PNG (default benchmarks/...)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--repeats", type=int, default=0, help="timed rounds, for benchmarks that take it"
    )
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or NAMES
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    suffix = "_quick" if args.quick else ""
    output = args.output or os.path.join(BENCH_DIR, f"results{suffix}.json")
    plot = args.plot or os.path.join(BENCH_DIR, f"scaling{suffix}.png")
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    # The same thread count everywhere, workers included (they read OMP_NUM_THREADS).
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())

    started = time.time()
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    options: Dict[str, Any] = {"plot_path": plot}
    if args.repeats:
        options["repeats"] = args.repeats
    rows, errors = run_benchmarks(names, args.quick, options)
    meta = _metadata(args, names, started)
    meta["load_average_at_start"] = load_at_start
    result = {"meta": meta, "rows": rows, "errors": errors}
    if args.only and os.path.isfile(output):  # a partial run keeps the other suites' rows
        result = _merged(output, result, names)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.splitext(output)[0] + ".md", "w") as f:
        f.write("\n".join(table_lines(result["rows"], markdown=True)) + "\n")

    print()
    print_table(rows)
    for e in errors:
        print(f"ERROR {e['benchmark']}: {e['error']}")
    missed = [r for r in rows if r.get("met") is False]
    print(
        f"\n{len(rows)} rows, {len(missed)} targets missed, {len(errors)} errors; "
        f"wrote {output} ({result['meta']['seconds']:.0f} s)"
    )
    return 1 if errors else 0


__all__ = ["main", "print_table", "table_lines", "run_benchmarks", "make_row"]

if __name__ == "__main__":
    sys.exit(main())
