"""Command line of ``pq_compute`` (console script ``panoptic-pq``):

    python -m panoptic_pq.cli --gt-json panoptic_val2017.json \
        --pred-json predictions.json [--gt-folder DIR] [--pred-folder DIR] [--workers N] \
        [--per-class] [--output results.json] [--engine auto|hotcoco|pure] \
        [--report DIR [--images IMAGE_DIR]]

prints panopticapi's table (PQ, SQ, RQ of All / Things / Stuff). ``pq_compute`` itself lives in
:mod:`panoptic_pq.panoptic_files` (``from panoptic_pq import pq_compute``).
"""

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

from .panoptic_files import PQ_ENGINES, _pq_compute_files, format_pq_table

__all__ = ["main"]


def _check_writable(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--output {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"--output {path} is a folder; expected a JSON file name")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise PermissionError(f"--output {path}: cannot write there")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: print the PQ table of a prediction JSON + PNG folder."""
    parser = argparse.ArgumentParser(
        prog="panoptic-pq",
        description="Panoptic quality (PQ, SQ, RQ) of COCO-format panoptic predictions; "
        "same numbers as panopticapi's pq_compute.",
    )
    parser.add_argument("--gt-json", required=True, help="COCO panoptic ground-truth JSON")
    parser.add_argument("--pred-json", required=True, help="COCO panoptic prediction JSON")
    parser.add_argument("--gt-folder", help="gt PNG folder (default: gt JSON path minus .json)")
    parser.add_argument(
        "--pred-folder", help="predicted PNG folder (default: pred JSON minus .json)"
    )
    parser.add_argument(
        "--engine",
        choices=PQ_ENGINES,
        default="auto",
        help="hotcoco (Rust), pure (this package's reader) or auto (hotcoco when installed)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="threads of the pure engine (default: all CPUs)"
    )
    parser.add_argument("--per-class", action="store_true", help="also print each category")
    parser.add_argument("--output", help="write the results dict to this JSON file")
    parser.add_argument(
        "--report", metavar="DIR", help="also write an HTML report (DIR/index.html, see docs)"
    )
    parser.add_argument("--images", metavar="DIR", help="the images, for the report's gallery")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        if args.output:  # before the evaluation, not after it
            _check_writable(args.output)
        results, categories = _pq_compute_files(
            args.gt_json,
            args.pred_json,
            args.gt_folder,
            args.pred_folder,
            args.workers,
            args.engine,
        )
    except (OSError, ValueError) as e:
        print(f"panoptic-pq: error: {e}", file=sys.stderr)
        return 1
    print(format_pq_table(results, categories, per_class=args.per_class))
    print("Time elapsed: {:0.2f} seconds".format(time.perf_counter() - start))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    if args.report:
        from .report import write_panoptic_report

        try:
            report = write_panoptic_report(
                args.report,
                args.gt_json,
                args.gt_folder,
                args.images,
                args.pred_json,
                args.pred_folder,
                num_workers=args.workers,
            )
        except (OSError, ValueError) as e:
            print(f"panoptic-pq: error: --report {args.report}: {e}", file=sys.stderr)
            return 1
        print(f"Wrote the report {report['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
