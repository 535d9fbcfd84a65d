#!/usr/bin/env python
"""
Paper ablations as a tool: train and evaluate a sweep of config overrides, one folder per run,
resumably, and tabulate and plot PQ, PQ_th, PQ_st, mIoU, box / mask AP, training time, FLOPs
and parameters.

    python tools/ablate.py --config-file CFG --sweep paper --output output/ablations \
        [--quick] [--jobs N] [--dry-run] [KEY VALUE ...]

``--sweep`` takes built-in sweeps (lambda_s, lambda_i, sem_seg_things, losses, networks, seeds;
"paper" for all), sweep YAML files or inline sweeps ``KEY=v1,v2`` (see
``panoptic_ext/apps/ablation/spec.py``). Run it again to finish an interrupted sweep: finished runs
are not run again, an interrupted one resumes from its last checkpoint, one whose loss diverged
(``ablation_diverged.json``) stays "diverged" in the report; a run folder that holds a run of
another config (e.g. other base overrides) is refused before anything runs, naming the changed
keys. A failing run does not stop the others: the report is written, then the command exits with
status 1 naming it.
"""

# ruff: noqa: E402  (imports after setting OMP_WAIT_POLICY)
import os

# Sleeping OpenMP waits: spinning ones make torch much slower on a shared CPU (see main_job.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from panoptic_ext.apps.ablation import main

if __name__ == "__main__":
    main()
