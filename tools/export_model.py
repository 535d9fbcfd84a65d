#!/usr/bin/env python
"""
Export a trained panoptic_ext model for ONNX Runtime or TorchScript:

    python tools/export_model.py --config-file configs/X.yaml --weights model_final.pth \
        --format onnx --output exported/ [--sample-image img.jpg] [--max-size 1333]

``--config-file`` takes a YAML config (``KEY VALUE`` overrides) or a Python config (``.py``,
``key=value`` overrides; weights from ``train.init_checkpoint``). The directory gets
``model.onnx`` (or ``model.ts``), ``export.json`` (input format and sizes, classes, label space,
post-processor options, the model file's sha256) and ``config.yaml``, all replaced at once when
the export is complete. Without weights the export is refused unless
``--allow-random-weights`` (smoke tests; the export is marked). ``--precision int8`` (opt-in)
writes int8 convolutions calibrated on ``--calibration-images``. Run it with
``panoptic_ext.apps.export.PanopticONNXPredictor(dir)``, ``demo/demo.py --onnx dir`` or evaluate it
with ``tools/evaluate_export.py --model-dir dir``.
"""

import sys

from panoptic_ext.apps.export.commands import export_main

if __name__ == "__main__":
    try:
        export_main(sys.argv[1:])
    except (ValueError, ImportError, FileNotFoundError) as e:  # bad input: the message, no trace
        sys.exit(f"{sys.argv[0]}: error: {e}")
