"""
The machine's own limit (``make bench`` measures it first): the best FP32 GFLOP/s reached now
on the benchmark's thread count by a large 3x3 convolution (oneDNN) and a large matrix multiply
(torch), and the same in bf16 where the CPU has bf16 dot products (avx512_bf16 / amx_bf16).
The inference benchmarks report their achieved GFLOP/s as a share of this limit
(``common.machine_limit``, measured once per process).

    python benchmarks/bench_limit.py [--quick] [--threads N]
"""

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch
from common import machine_limit, make_row


def run(quick: bool = False) -> List[Dict[str, Any]]:
    """One row per probe (GFLOP/s; ratio = share of the best probe of its precision)."""
    limit = machine_limit(quick)
    size = "256->256 ch, 200x304" if not quick else "64->64 ch, 50x76"
    n = 1024 if quick else 4096
    rows = []
    for precision in ("fp32", "bf16"):
        best = limit.get(f"{precision}_gflops")
        if best is None:
            continue
        for probe, what in ((f"conv3x3_{precision}", f"3x3 conv {size} (oneDNN)"),
                            (f"matmul_{precision}", f"matmul {n}^3 (torch)")):  # fmt: skip
            rows.append(
                make_row(
                    "limit",
                    f"{precision.upper()} {what}, {limit['threads']} threads",
                    2 if quick else 5,
                    f"best {precision.upper()} probe",
                    unit="GFLOP/s",
                    ours_value=limit[probe],
                    reference_value=best,
                    ratio=limit[probe] / best,
                    bf16_supported=limit["bf16_supported"],
                    load_average=limit["load_average"],
                )
            )
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from run_all import print_table

    print_table(run(args.quick))


if __name__ == "__main__":
    sys.exit(main())
