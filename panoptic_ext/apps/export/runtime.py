"""
``ExportedPanopticModel``: run an exported network (ONNX Runtime or TorchScript) and its
host-side part, the project's own panoptic post-processor (the one the eager model calls), on
detectron2-style inputs.
"""

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Boxes, Instances

from panoptic_ext.apps.export.metadata import (
    IDENTITY_KEY,
    ExportError,
    check_identity,
    check_model_file,
    read_export_meta,
)
from panoptic_ext.modeling.panoptic_postprocessor import PANOPTIC_POSTPROCESSOR_REGISTRY

__all__ = ["ExportedPanopticModel", "import_onnxruntime", "onnx_session_options"]

logger = logging.getLogger(__name__)

_ORT_HINT = (
    "pip install onnxruntime==1.32.0 (CPU), or onnxruntime-gpu for CUDA "
    "(the versions are pinned in constraints.txt)"
)


def import_onnxruntime():
    """``onnxruntime``, or an ImportError that says what to install."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"running an ONNX export needs onnxruntime: {_ORT_HINT}") from e
    return onnxruntime


def onnx_session_options(
    num_threads: Optional[int] = None, config: Optional[Mapping[str, str]] = None
):
    """
    The ONNX Runtime session options the runtime uses: every graph optimization (constant
    folding, convolution + activation / add fusion, the blocked NCHWc layout of MLAS' fastest
    convolutions), sequential execution (the graph is one chain of large operators; a second
    pool of threads only competes with the first), ``num_threads`` intra-op threads, and no
    spin-waiting when ``OMP_WAIT_POLICY=PASSIVE`` (as torch's OpenMP threads; spinning threads are
    slow on a busy machine).

    Args:
        num_threads (int): intra-op threads (default: ONNX Runtime's, one per physical core).
        config (dict[str, str]): further session config entries, e.g.
            ``{"session.intra_op.allow_spinning": "0"}``; they override the above.
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
    entries = {}
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        entries["session.intra_op.allow_spinning"] = "0"
    entries.update(config or {})
    for key, value in entries.items():
        options.add_session_config_entry(key, str(value))
    return options


def _onnx_session(
    path: str,
    providers: Optional[Sequence[str]],
    num_threads: Optional[int],
    config: Optional[Mapping[str, str]] = None,
):
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider",) if p in available]
        providers.append("CPUExecutionProvider")
    missing = [p for p in providers if p not in available]
    if missing:
        raise ValueError(f"ONNX Runtime providers {missing} are not available; have {available}")
    options = onnx_session_options(num_threads, config)
    try:
        return ort.InferenceSession(path, options, providers=list(providers))
    except Exception as e:  # ORT raises its own exception types for unreadable models
        raise ExportError(f"{path} is not an ONNX model that ONNX Runtime can load: {e}") from e


class ExportedPanopticModel:
    """
    An exported model directory (``tools/export_model.py``) as a detectron2 model: called with a
    list of one input dict ("image": (3, H, W) tensor in ``INPUT.FORMAT``, optional "height" /
    "width") it returns ``[outputs]`` as ``PanopticFPNExt`` does (``panoptic_seg`` with the
    dataset's category ids, and ``sem_seg`` / ``instances`` when the exported config returns
    them), so detectron2's ``inference_on_dataset`` and the project's evaluators take it.

    Args:
        model_dir (str): the export directory.
        providers (list[str]): ONNX Runtime providers (default: CUDA when available, then CPU).
        num_threads (int): ONNX Runtime intra-op threads (default: ONNX Runtime's choice).
        device (str): TorchScript exports: the torch device to run on (default "cpu").
        session_config (dict[str, str]): ONNX Runtime session config entries (see
            :func:`onnx_session_options`).
    """

    def __init__(
        self,
        model_dir: str,
        providers: Optional[Sequence[str]] = None,
        num_threads: Optional[int] = None,
        device: str = "cpu",
        session_config: Optional[Mapping[str, str]] = None,
    ):
        self.meta = read_export_meta(model_dir)
        self.model_dir = model_dir
        path = check_model_file(model_dir, self.meta)  # the model file export.json describes
        if self.random_weights:
            logger.warning(
                "%s holds a RANDOMLY INITIALIZED model (exported with --allow-random-weights): "
                "its predictions mean nothing",
                model_dir,
            )
        if self.meta["format"] == "onnx":
            self._session = _onnx_session(path, providers, num_threads, session_config)
            record = self._session.get_modelmeta().custom_metadata_map.get(IDENTITY_KEY)
        else:
            extra = {IDENTITY_KEY: ""}
            try:
                self._module = torch.jit.load(path, map_location=device, _extra_files=extra)
            except Exception as e:  # torch raises RuntimeError/ValueError for foreign files
                raise ExportError(f"{path} is not a TorchScript model: {e}") from e
            self._device = torch.device(device)
            record = extra[IDENTITY_KEY] or None
        if record is None:
            raise ExportError(f"{path} was not exported by panoptic_ext (no export record)")
        check_identity(self.meta, json.loads(record), path)
        spec = self.meta["postprocessor"]
        self.postprocessor = PANOPTIC_POSTPROCESSOR_REGISTRY.get(spec["name"])(**spec["kwargs"])
        self.max_size = int(self.meta["input"]["max_size"])
        # "fp32", or "int8" for a quantized copy (panoptic_ext.apps.export.quantize)
        self.precision = self.meta.get("precision", "fp32")
        self.input_format = self.meta["input"]["format"]
        self.stride = int(self.meta["sem_seg_stride"])

    @property
    def random_weights(self) -> bool:
        """Whether the export holds a randomly initialized model (exported without weights)."""
        return bool(self.meta.get("random_weights", False))

    @property
    def providers(self) -> List[str]:
        """The ONNX Runtime providers in use (["torch:<device>"] for TorchScript)."""
        if self.meta["format"] == "onnx":
            return self._session.get_providers()
        return [f"torch:{self._device}"]

    def run_network(self, image, name: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """
        The exported graph on one (3, H, W) image (numpy array or tensor, any real dtype):
        its outputs by name (see :class:`~panoptic_ext.apps.export.network.ExportableNetwork`),
        as CPU tensors. ``name`` (e.g. the file name) is named in errors about the image.

        Raises:
            ValueError: the image is not (3, H, W) or a side is outside 1..``max_size``
                (:class:`PanopticONNXPredictor` resizes images so that they fit).
        """
        image = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
        image = np.ascontiguousarray(image, dtype=np.float32)
        which = f"{name}: " if name else ""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"{which}the image must be (3, H, W), got shape {image.shape}")
        if max(image.shape[1:]) > self.max_size or min(image.shape[1:]) < 1:
            raise ValueError(
                f"{which}image of {image.shape[1]}x{image.shape[2]} pixels: this export accepts "
                f"heights and widths from 1 to {self.max_size} (export.json input.max_size; "
                "export again with a larger --max-size, or resize the image as "
                "PanopticONNXPredictor does)"
            )
        if self.meta["format"] == "onnx":
            outputs = self._session.run(None, {self.meta["input"]["name"]: image})
            outputs = [torch.from_numpy(x) for x in outputs]
        else:
            with torch.no_grad():
                outputs = self._module(torch.from_numpy(image).to(self._device))
            outputs = [x.cpu() for x in outputs]
        return dict(zip(self.meta["outputs"], outputs))

    def postprocess(
        self, raw: Dict[str, torch.Tensor], image_size: Tuple[int, int], output_size
    ) -> Dict[str, Any]:
        """The host-side part: detections and masks as the ROI heads' Instances, then the
        model's panoptic post-processor (fusion, label space) at ``output_size``."""
        boxes, masks, rows = raw["boxes"], raw["masks"], raw["mask_rows"]
        pred_masks = masks.new_zeros((len(boxes),) + tuple(masks.shape[1:]))
        pred_masks[rows] = masks  # detections the graph skipped (below threshold) get 0
        instances = Instances(
            tuple(image_size),
            pred_boxes=Boxes(boxes),
            scores=raw["scores"],
            pred_classes=raw["classes"],
            pred_masks=pred_masks,
        )
        return self.postprocessor(
            raw["sem_seg"][0],
            instances,
            stride=self.stride,
            image_size=tuple(image_size),
            output_size=output_size,
        )

    def __call__(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        results = []
        for inputs in batched_inputs:  # the graph takes one image
            image = inputs["image"]
            size = (int(image.shape[-2]), int(image.shape[-1]))
            output_size = (inputs.get("height", size[0]), inputs.get("width", size[1]))
            raw = self.run_network(image, inputs.get("file_name"))
            results.append(self.postprocess(raw, size, output_size))
        return results
