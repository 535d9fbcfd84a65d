"""The results of a sweep as ``results.csv``, ``results.md`` and one plot per sweep. A run that
has no result is shown as "diverged" (its loss became NaN/inf), "failed" (an error in this
call) or "not run"."""

import csv
import math
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from panoptic_ext.apps.ablation.runner import read_diverged, read_result
from panoptic_ext.apps.ablation.spec import Sweep

__all__ = ["METRICS", "collect_rows", "write_report"]

# (column, label, decimals in the markdown table) of the numbers reported for each run.
METRICS = (
    ("PQ", "PQ", 1),
    ("PQ_th", "PQ_th", 1),
    ("PQ_st", "PQ_st", 1),
    ("mIoU", "mIoU", 1),
    ("box_AP", "box AP", 1),
    ("mask_AP", "mask AP", 1),
    ("train_seconds", "train s", 0),
    ("seconds_per_iter", "s/iter", 2),
    ("gflops", "GFLOPs", 2),
    ("params_m", "params (M)", 1),
)
_COLUMNS = (
    ["sweep", "axis", "point", "value", "repeat", "run", "networks"]
    + [m for m, _, _ in METRICS]
    + ["status"]
)


def collect_rows(sweeps: Sequence[Sweep], output_root: str) -> List[Dict[str, Any]]:
    """One row per (sweep, point, repeat) whose run has finished."""
    rows = []
    for sweep in sweeps:
        for point in sweep.points:
            for i, run in enumerate(point.runs):
                result = read_result(os.path.join(output_root, run.name))
                if result is None:
                    continue
                row = {
                    "sweep": sweep.name,
                    "axis": sweep.axis,
                    "point": point.label,
                    "value": point.value,
                    "repeat": i,
                    "run": run.name,
                    "networks": run.networks,
                }
                for key, _, _ in METRICS:
                    row[key] = result["metrics"].get(key, result.get(key, float("nan")))
                rows.append(dict(row, status="finished"))
    return rows


def _mean_std(values: List[float], decimals: int) -> str:
    """The value, or mean ± standard deviation over repeats; "-" for NaN (e.g. AP without
    detections)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{decimals}f}"
    return f"{statistics.mean(values):.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def _markdown(sweeps: Sequence[Sweep], rows: List[Dict[str, Any]], states: Dict[str, str]) -> str:
    lines = []
    for sweep in sweeps:
        lines += [f"### {sweep.name}", ""]
        if sweep.description:
            lines += [sweep.description, ""]
        header = [sweep.axis] + [label for _, label, _ in METRICS] + ["runs"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for point in sweep.points:
            mine = [r for r in rows if r["sweep"] == sweep.name and r["point"] == point.label]
            names = sorted({r.name for r in point.runs})
            others = [states[r.name] for r in point.runs if r.name in states]
            if not mine:
                state = others[0] if len(set(others)) == 1 else "not finished"
                lines.append(f"| {point.label} | " + f"{state} | " * len(METRICS) + "- |")
                continue
            cells = [_mean_std([float(r[key]) for r in mine], d) for key, _, d in METRICS]
            seeds = f" ({len(mine)} seeds)" if len(mine) > 1 else ""
            if others:
                seeds += "; " + ", ".join(f"{others.count(s)} {s}" for s in sorted(set(others)))
            lines.append(
                f"| {point.label}{seeds} | " + " | ".join(cells) + f" | {', '.join(names)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _baseline_noise(rows: List[Dict[str, Any]]) -> Dict[str, Tuple[float, float]]:
    """Metric -> (mean, std) over the repeats of the baseline (a point with several finished runs,
    the first of them the base config), or {} if there is none."""
    by_point: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in rows:
        by_point.setdefault((r["sweep"], r["point"]), []).append(r)
    for mine in by_point.values():
        if len(mine) > 1 and mine[0]["run"] == "baseline":
            values = {k: [float(r[k]) for r in mine] for k, _, _ in METRICS}
            return {k: (statistics.mean(v), statistics.stdev(v)) for k, v in values.items()}
    return {}


def _plot(
    sweep: Sweep, rows: List[Dict[str, Any]], noise: Dict[str, Tuple[float, float]], path: str
) -> Optional[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r["sweep"] == sweep.name]
    if not mine:
        return None
    numeric = all(
        isinstance(p.value, (int, float)) and not isinstance(p.value, bool) for p in sweep.points
    )
    xs = [p.value if numeric else i for i, p in enumerate(sweep.points)]
    fig, axes = plt.subplots(2, 5, figsize=(14, 5.2))
    for ax, (key, label, _) in zip(axes.flat, METRICS):
        if key in noise:  # the seed-to-seed spread of the baseline
            mean, std = noise[key]
            ax.axhspan(mean - std, mean + std, color="0.85", zorder=0)
        means = []
        for x, point in zip(xs, sweep.points):
            ys = [float(r[key]) for r in mine if r["point"] == point.label]
            ax.plot([x] * len(ys), ys, "o", color="tab:blue", alpha=0.6, ms=5)
            means.append(statistics.mean(ys) if ys else float("nan"))
        if numeric:  # a line only where the axis is a value
            ax.plot(xs, means, "-", color="tab:blue")
        else:
            ax.set_xticks(xs)
            ax.set_xticklabels([p.label for p in sweep.points], fontsize=8, rotation=20)
            ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_title(label, fontsize=10)
        ax.tick_params(labelsize=8)
    band = "; grey band: baseline mean ± std over seeds" if noise else ""
    fig.suptitle(f"{sweep.name}: metrics vs {sweep.axis}{band}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def _states(
    sweeps: Sequence[Sweep], output_root: str, finished: set, failed: Dict[str, str]
) -> Dict[str, str]:
    """Run name -> "diverged", "failed" or "not run", for the runs without a result."""
    states = {}
    for run in {run.name: run for s in sweeps for p in s.points for run in p.runs}.values():
        if run.name in finished:
            continue
        if read_diverged(os.path.join(output_root, run.name)) is not None:
            states[run.name] = "diverged"
        else:
            states[run.name] = "failed" if run.name in failed else "not run"
    return states


def write_report(
    sweeps: Sequence[Sweep], output_root: str, failed: Optional[Dict[str, str]] = None
) -> Dict[str, Any]:
    """
    Write ``results.csv`` (one row per run of each point: the finished ones with their numbers,
    the others with their status), ``results.md`` (per sweep a table; mean ± std over repeats;
    "diverged", "failed" or "not run" for a point without a finished run) and
    ``plots/<sweep>.png`` (each metric against the swept value) in ``output_root``.

    Args:
        failed (dict): {run name: error} of the runs that failed in this call.

    Returns:
        dict: "csv", "markdown", "plots" (paths), "rows" (finished runs), "missing" (runs not
        finished), "diverged" (runs that diverged), "failed" (``failed``).
    """
    failed = dict(failed or {})
    rows = collect_rows(sweeps, output_root)
    finished = {r["run"] for r in rows}
    states = _states(sweeps, output_root, finished, failed)
    unfinished = []
    for sweep in sweeps:
        for point in sweep.points:
            for i, run in enumerate(point.runs):
                if run.name in states:
                    unfinished.append(
                        {"sweep": sweep.name, "axis": sweep.axis, "point": point.label,
                         "value": point.value, "repeat": i, "run": run.name,
                         "networks": run.networks, "status": states[run.name]}
                    )  # fmt: skip
    csv_path = os.path.join(output_root, "results.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMNS)
        writer.writeheader()
        writer.writerows(rows + unfinished)
    md_path = os.path.join(output_root, "results.md")
    with open(md_path, "w") as f:
        f.write(_markdown(sweeps, rows, states))
    os.makedirs(os.path.join(output_root, "plots"), exist_ok=True)
    noise = _baseline_noise(rows)
    plots = [
        _plot(sweep, rows, noise, os.path.join(output_root, "plots", f"{sweep.name}.png"))
        for sweep in sweeps
    ]
    return {
        "csv": csv_path,
        "markdown": md_path,
        "plots": [p for p in plots if p],
        "rows": rows,
        "missing": sorted(states),
        "diverged": sorted(n for n, s in states.items() if s == "diverged"),
        "failed": failed,
    }
