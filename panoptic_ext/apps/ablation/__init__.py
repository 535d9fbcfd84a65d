"""
panoptic_ext.apps.ablation: the paper's ablations as a tool (``tools/ablate.py``). A sweep spec
(:mod:`.spec`) names config overrides; each run is trained and evaluated by the project's
``Trainer`` in its own folder, resumably (:mod:`.runner`); the results go to a CSV, a markdown
table and plots (:mod:`.report`). Joint vs separate networks: :mod:`.separate`.
"""

from panoptic_ext.apps.ablation.builtin_sweeps import BUILTIN_GROUPS, BUILTIN_SWEEPS
from panoptic_ext.apps.ablation.compute import RawInference, count_compute
from panoptic_ext.apps.ablation.report import METRICS, collect_rows, write_report
from panoptic_ext.apps.ablation.runner import (
    DIVERGED_FILE,
    RESULT_FILE,
    RunConfigChanged,
    check_run_folder,
    read_diverged,
    read_result,
    run_one,
)
from panoptic_ext.apps.ablation.separate import SeparateNetworksPanoptic, separate_network_configs
from panoptic_ext.apps.ablation.spec import (
    Point,
    Run,
    Sweep,
    SweepSpecError,
    load_sweeps,
    run_config,
    unique_runs,
)
from panoptic_ext.apps.ablation.sweep import QUICK_OPTS, main, run_sweeps

__all__ = [
    "BUILTIN_GROUPS",
    "BUILTIN_SWEEPS",
    "DIVERGED_FILE",
    "METRICS",
    "QUICK_OPTS",
    "RESULT_FILE",
    "Point",
    "RawInference",
    "Run",
    "RunConfigChanged",
    "SeparateNetworksPanoptic",
    "Sweep",
    "SweepSpecError",
    "check_run_folder",
    "collect_rows",
    "count_compute",
    "load_sweeps",
    "main",
    "read_diverged",
    "read_result",
    "run_config",
    "run_one",
    "run_sweeps",
    "separate_network_configs",
    "unique_runs",
    "write_report",
]
