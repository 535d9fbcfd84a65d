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
from panoptic_ext.apps.ablation.runner import RunConfigChanged, check_run_folder, run_one
from panoptic_ext.apps.ablation.spec import Run, SweepSpecError, load_sweeps, unique_runs
from panoptic_ext.apps.train.config_loading import whole_number_at_least

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


def _run_or_fail(run: Run, config_file: str, opts, output_root: str) -> Optional[str]:
    """:func:`run_one`; an error other than a config conflict or Ctrl-C is logged and returned
    (the sweep goes on with the other runs)."""
    try:
        run_one(run, config_file, opts, output_root)
    except RunConfigChanged:
        raise
    except Exception as e:
        logger.exception("Run %s failed", run.name)
        return f"{type(e).__name__}: {e}"
    return None


def _execute(
    runs: Sequence[Run], config_file: str, opts, output_root: str, jobs: int
) -> Dict[str, str]:
    """Run every run; returns {run name: error} of the runs that failed (diverging is a result,
    not a failure: :func:`run_one` records it)."""
    if jobs <= 1:
        errors = {run.name: _run_or_fail(run, config_file, opts, output_root) for run in runs}
        return {name: error for name, error in errors.items() if error}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # fork: workers inherit the datasets registered by the caller (spawn would not); the caller
    # has run no torch op yet (OpenMP's threads do not survive a fork)
    with ProcessPoolExecutor(
        jobs, multiprocessing.get_context("fork"), _worker_init, (threads,)
    ) as pool:
        futures = {
            run.name: pool.submit(_run_or_fail, run, config_file, opts, output_root) for run in runs
        }
        errors = {}
        for name, future in futures.items():
            try:
                errors[name] = future.result()
            except RunConfigChanged:
                raise
            except Exception as e:  # the worker process died
                logger.error("Run %s failed: %s", name, e)
                errors[name] = f"{type(e).__name__}: {e}"
    return {name: error for name, error in errors.items() if error}


def _check_folders(runs: Sequence[Run], config_file: str, opts, output_root: str) -> None:
    """Every run folder that holds a run of another config, in one error, before any run."""
    conflicts = []
    for run in runs:
        try:
            check_run_folder(run, config_file, opts, output_root)
        except RunConfigChanged as e:
            conflicts.append(str(e))
    if conflicts:
        raise RunConfigChanged("\n".join(conflicts))


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
        dict: the report's paths, "rows", "missing", "diverged" and "failed", plus "sweeps" and
        "runs".

    Raises:
        SweepSpecError: a bad spec, config or ``jobs``, before anything runs.
        RunConfigChanged: folders that hold runs of other configs, before anything runs.
    """
    if jobs < 1:
        raise SweepSpecError(f"--jobs must be >= 1 (runs at a time), got {jobs}")
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
    failed: Dict[str, str] = {}
    if not report_only:
        _check_folders(runs, config_file, opts, output_root)
    os.makedirs(output_root, exist_ok=True)
    if not report_only:
        failed = _execute(runs, config_file, opts, output_root, jobs)
    report = write_report(sweeps, output_root, failed)
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
    parser.add_argument(
        "--jobs", type=whole_number_at_least(1), default=1, help="runs at a time (default 1)"
    )
    parser.add_argument("--dry-run", action="store_true", help="check and list the runs only")
    parser.add_argument(
        "--report-only", action="store_true", help="tabulate the finished runs, train nothing"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of every run")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``tools/ablate.py``'s command line. A bad spec or a folder of another config exits with its
    message before any run; runs that fail do not stop the others: after the report, the command
    exits with status 1 naming them; runs that diverge are reported as "diverged"."""
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
    except (SweepSpecError, RunConfigChanged) as e:
        raise SystemExit(f"ablate: {e}") from e
    if result.get("diverged"):
        logger.warning("Runs that diverged (shown as 'diverged'): %s", result["diverged"])
    missing: List[str] = [
        name for name in result.get("missing", []) if name not in result.get("diverged", [])
    ]
    if missing:
        logger.warning("Runs not finished: %s", missing)
    failed: Dict[str, str] = result.get("failed", {})
    if failed:
        lines = "\n  ".join(f"{name}: {error}" for name, error in failed.items())
        raise SystemExit(
            f"ablate: {len(failed)} run(s) failed (the report {result['markdown']} shows the "
            f"others; run the command again to retry them):\n  {lines}"
        )
    return result
