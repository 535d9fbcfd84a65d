"""panoptic_ext.apps.export: the network as ONNX / TorchScript, and the host code that runs it.

The exported graph holds everything up to the raw detections, mask probabilities and semantic
logits (:class:`ExportableNetwork`); the data-dependent panoptic fusion runs on the host in the
project's own post-processor (:class:`ExportedPanopticModel`).
"""

from panoptic_ext.apps.export.exporter import DEFAULT_OPSET, export_model
from panoptic_ext.apps.export.metadata import EXPORT_FILE, MIN_OPSET, ExportError
from panoptic_ext.apps.export.network import ExportableNetwork, check_exportable
from panoptic_ext.apps.export.predictor import PanopticONNXPredictor
from panoptic_ext.apps.export.runtime import ExportedPanopticModel

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FILE",
    "MIN_OPSET",
    "ExportError",
    "ExportableNetwork",
    "ExportedPanopticModel",
    "PanopticONNXPredictor",
    "check_exportable",
    "export_model",
]
