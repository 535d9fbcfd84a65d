"""
panoptic_ext.apps: the applications built on the plugin (never imported by it).

* :mod:`panoptic_ext.apps.train`: ``train_net.py`` (YAML and Python configs), run management
  (output folder, checkpoints, resume) and distributed launch.
* :mod:`panoptic_ext.apps.predict`: ``PanopticPredictor`` and the demo's image helpers.
* :mod:`panoptic_ext.apps.export`: ONNX / TorchScript export and the runtime that runs it.
* :mod:`panoptic_ext.apps.ablation`: the paper's ablations as sweeps (``tools/ablate.py``).
"""
