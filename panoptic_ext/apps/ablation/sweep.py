"""``tools/ablate.py``: check the specs, do what is left of each run, write the report."""

import argparse
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.ablation.builtin_sweeps import BUILTIN_GROUPS, BUILTIN_SWEEPS
from panoptic_ext.apps.ablation.report import write_report
from panoptic_ext.apps.ablation.runner import run_one
from panoptic_ext.apps.ablation.spec import Run, SweepSpecError, load_sweeps, unique_runs

__all__ = ["QUICK_OPTS", "run_sweeps", "main", "argument_parser"]

logger = logging.getLogger(__name__)

# --quick: a smoke schedule that checks a spec end to end (not a result).
QUICK_OPTS = [
    "SOLVER.MAX_ITER", 4,
    "SOLVER.WARMUP_ITERS", 2,
    "SOLVER.CHECKPOINT_PERIOD", 2,
    "TEST.EVAL_PERIOD", 0,
]  # fmt: skip


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _execute(runs: Sequence[Run], config_file: str, opts, output_root: str, jobs: int) -> None:
    if jobs <= 1:
        for run in runs:
            run_one(run, config_file, opts, output_root)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # fork: workers inherit the datasets registered by the caller (spawn would not); the caller
    # has run no torch op yet (OpenMP's threads do not survive a fork)
    with ProcessPoolExecutor(
        jobs, multiprocessing.get_context("fork"), _worker_init, (threads,)
    ) as pool:
        futures = [pool.submit(run_one, run, config_file, opts, output_root) for run in runs]
        for future in futures:
            future.result()


def run_sweeps(
    specs: Sequence[str],
    config_file: str,
    output_root: str,
    opts: Sequence[Any] = (),
    *,
    quick: bool = False,
    jobs: int = 1,
    dry_run: bool = False,
    report_only: bool = False,
) -> Dict[str, Any]:
    """
    Check every spec and run config first (:func:`load_sweeps`), then run what is left of each
    distinct run (:func:`run_one`, one folder each under ``output_root``) and write the report
    (:func:`write_report`).

    Args:
        specs (list[str]): built-in sweep names, YAML files or inline ``KEY=v1,v2`` sweeps.
        config_file (str): the base config.
        output_root (str): the sweep's folder.
        opts (list): ``KEY VALUE`` overrides of every run (before the spec's).
        quick (bool): the smoke schedule :data:`QUICK_OPTS` (after ``opts``).
        jobs (int): runs at a time; > 1 forks worker processes (each with
            ``cpu_count // jobs`` torch threads), which inherit the registered datasets.
        dry_run (bool): check and list the runs, train nothing.
        report_only (bool): write the report of the runs finished so far, train nothing.

    Returns:
        dict: the report's paths, "rows" and "missing", plus "sweeps" and "runs".
    """
    opts = list(opts) + (QUICK_OPTS if quick else [])
    sweeps = load_sweeps(specs, config_file, opts)  # every error before anything runs
    runs = unique_runs(sweeps)
    for run in runs:
        logger.info(
            "Run %s: %s",
            run.name,
            ", ".join(f"{k}={v}" for k, v in run.overrides) or "the base config",
        )
    if dry_run:
        return {"sweeps": sweeps, "runs": runs}
    os.makedirs(output_root, exist_ok=True)
    if not report_only:
        _execute(runs, config_file, opts, output_root, jobs)
    report = write_report(sweeps, output_root)
    logger.info(
        "Results: %s, %s, plots in %s",
        report["csv"],
        report["markdown"],
        os.path.join(output_root, "plots"),
    )
    return dict(report, sweeps=sweeps, runs=runs)


def argument_parser() -> argparse.ArgumentParser:
    known = ", ".join(sorted(BUILTIN_SWEEPS) + sorted(BUILTIN_GROUPS))
    parser = argparse.ArgumentParser(
        description="Train and evaluate a sweep of config overrides (the paper's ablations); "
        "resumable: run it again to finish what is left.",
        epilog=f"Built-in sweeps: {known}. Trailing KEY VALUE pairs override every run.",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--sweep", nargs="+", required=True, metavar="SPEC",
        help="built-in name, sweep YAML file, or inline 'KEY=v1,v2 [KEY2=a,b]'",
    )  # fmt: skip
    parser.add_argument("--output", required=True, metavar="DIR", help="one folder per run")
    parser.add_argument("--quick", action="store_true", help="4-iteration smoke schedule")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="check and list the runs only")
    parser.add_argument(
        "--report-only", action="store_true", help="tabulate the finished runs, train nothing"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of every run")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``tools/ablate.py``'s command line; a bad spec exits with its message (status 2)."""
    args = argument_parser().parse_args(argv)
    # Its own console handler (propagate=False): each run adds detectron2's and panoptic_ext's
    # for its duration (runner._run_logging), so nothing is printed twice.
    setup_logger(name=__name__.rsplit(".", 1)[0])
    try:
        result = run_sweeps(
            args.sweep, args.config_file, args.output, args.opts,
            quick=args.quick, jobs=args.jobs, dry_run=args.dry_run,
            report_only=args.report_only,
        )  # fmt: skip
    except SweepSpecError as e:
        raise SystemExit(f"ablate: {e}") from e
    missing: List[str] = result.get("missing", [])
    if missing:
        logger.warning("Runs not finished: %s", missing)
    return result
