#!/usr/bin/env python
"""
Evaluate an exported model (``tools/export_model.py``) with the project's evaluators, as
``train_net.py --eval-only`` evaluates the eager model:

    python tools/evaluate_export.py --model-dir exported/ [--dataset panoptic_synthetic_val] \
        [--threads 2] [--output DIR] [--compare-eager]

``--compare-eager`` also runs the eager model the export came from and reports both metrics and
the panoptic pixel agreement; it refuses (exit status 1) an export of random weights.
"""

import sys

from panoptic_ext.apps.export.commands import evaluate_main

if __name__ == "__main__":
    try:
        evaluate_main(sys.argv[1:])
    except (ValueError, ImportError, FileNotFoundError) as e:  # bad input: the message, no trace
        sys.exit(f"{sys.argv[0]}: error: {e}")
