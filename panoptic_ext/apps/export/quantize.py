"""
Reduced precision for an ONNX export, opt-in only (never the default): int8 convolutions through
ONNX Runtime's static quantization (weights per output channel, activations calibrated on
images), written as a new export folder beside the float32 one. bfloat16 needs CPU support
(AVX-512 BF16 or AMX) that is checked first and refused clearly where it is missing.
"""

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from panoptic_ext.apps.export.metadata import (
    EXPORT_FILE,
    ExportError,
    file_digest,
    read_export_meta,
)
from panoptic_ext.modeling.cpu_inference import cpu_flags

__all__ = [
    "PRECISIONS",
    "calibration_inputs",
    "check_cpu_support",
    "cpu_flags",
    "quantize_export",
]

logger = logging.getLogger(__name__)

# precision -> (CPU flags of which one is needed, what it is)
PRECISIONS = {
    "int8": (("avx2", "avx512_vnni", "avx_vnni", "asimd"), "8-bit integer dot products"),
    "bf16": (("avx512_bf16", "amx_bf16"), "bfloat16 dot products (AVX-512 BF16 or AMX)"),
}


def check_cpu_support(precision: str, flags: Optional[Sequence[str]] = None) -> None:
    """Raise :class:`ExportError` unless this CPU runs ``precision`` fast (see PRECISIONS)."""
    if precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    needed, what = PRECISIONS[precision]
    flags = cpu_flags() if flags is None else list(flags)
    if not set(needed) & set(flags):
        raise ExportError(
            f"--precision {precision} needs {what}: this CPU reports none of the flags "
            f"{list(needed)} in /proc/cpuinfo; keep the float32 export"
        )


def calibration_inputs(meta: Dict[str, Any], files: Sequence[str]) -> List[np.ndarray]:
    """
    The network inputs (3, H, W) float32 of image files, resized and in the channel order as
    the export's predictor feeds them; without files, a generated image of the test size.
    """
    from detectron2.data import transforms as T

    from panoptic_ext.apps.predict.image_input import read_image_bgr

    size = meta["input"]
    if files:
        images = [read_image_bgr(f) for f in files]
    else:  # smooth random blocks, as the exporter's default sample
        rng = np.random.default_rng(0)
        h, w = size["min_size_test"], int(size["min_size_test"] * 4 / 3)
        small = rng.integers(0, 256, (max(h // 16, 1), max(w // 16, 1), 3), dtype=np.uint8)
        images = [np.kron(small, np.ones((16, 16, 1), dtype=np.uint8))[:h, :w]]
    aug = T.ResizeShortestEdge([size["min_size_test"]] * 2, size["max_size_test"])
    out = []
    for image in images:
        if size["format"] == "RGB":
            image = image[:, :, ::-1]
        image = aug.get_transform(image).apply_image(np.ascontiguousarray(image))
        out.append(image.astype("float32").transpose(2, 0, 1))
    return out


class _ImageReader:
    """ONNX Runtime's CalibrationDataReader protocol over (3, H, W) float32 images."""

    def __init__(self, name: str, images: Iterable[np.ndarray]):
        self._inputs = iter([{name: np.ascontiguousarray(x, dtype=np.float32)} for x in images])

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._inputs, None)


def _keep_identity(source: str, path: str) -> None:
    """Copy the export record (metadata_props) of the float32 model into the quantized one."""
    import onnx

    props = {p.key: p.value for p in onnx.load(source, load_external_data=False).metadata_props}
    model = onnx.load(path)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, path)


def quantize_export(
    model_dir: str,
    output_dir: str,
    calibration_images: Sequence[np.ndarray],
    precision: str = "int8",
) -> Dict[str, Any]:
    """
    Write an int8 copy of the float32 ONNX export ``model_dir`` to ``output_dir`` (a new folder):
    the convolutions quantized statically (QDQ; int8 weights per output channel, uint8
    activations with ranges calibrated on ``calibration_images``), everything else float32;
    ``export.json`` says ``"precision": "int8"``. Its predictions differ from float32: measure
    them (tools/evaluate_export.py) before using it.

    Args:
        model_dir (str): a float32 ONNX export (tools/export_model.py).
        output_dir (str): where the quantized export goes (must not exist).
        calibration_images (list[np.ndarray]): (3, H, W) images as the network takes them
            (resized as the predictor resizes, in the export's input format).
        precision (str): "int8" ("bf16" is checked and refused where unsupported, and not
            implemented by ONNX Runtime's CPU kernels for convolutions in any case).

    Returns:
        dict: the new export.json.
    """
    check_cpu_support(precision)
    if precision != "int8":
        raise ExportError(
            f"--precision {precision}: ONNX Runtime's CPU provider has no {precision} "
            "convolution kernels; use --precision int8"
        )
    meta = read_export_meta(model_dir)
    if meta["format"] != "onnx":
        raise ExportError(f"{model_dir}: int8 quantization needs an ONNX export")
    if meta.get("precision", "fp32") != "fp32":
        raise ExportError(f"{model_dir} is already quantized ({meta['precision']})")
    if not len(calibration_images):
        raise ExportError("int8 quantization needs at least one calibration image")
    if os.path.exists(output_dir):
        raise ExportError(f"{output_dir} exists: give a new folder for the int8 export")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from panoptic_ext.apps.export.exporter import _sync_files
    from panoptic_ext.apps.export.metadata import check_model_file

    source = check_model_file(model_dir, meta)
    flags = set(cpu_flags())
    # without VNNI, u8 x s8 products can saturate in AVX2's 16-bit sums: 7-bit weights avoid it
    reduce_range = not ({"avx512_vnni", "avx_vnni"} & flags)
    parent = os.path.dirname(os.path.abspath(output_dir))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        path = os.path.join(tmp, meta["file"])
        quantize_static(
            source,
            path,
            _ImageReader(meta["input"]["name"], calibration_images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        _keep_identity(source, path)
        out = dict(meta)
        out.update(
            precision="int8",
            quantization={
                "method": "onnxruntime static QDQ, Conv only, per-channel weights, MinMax",
                "reduce_range": reduce_range,
                "calibration_images": len(calibration_images),
                "source_model_file": meta["model_file"],
            },
            model_file=file_digest(path),
        )
        shutil.copy(os.path.join(model_dir, meta["config"]["file"]), tmp)
        with open(os.path.join(tmp, EXPORT_FILE), "w") as f:
            json.dump(out, f, indent=2)
        _sync_files(tmp)
        os.rename(tmp, output_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Wrote the int8 export of %s to %s", model_dir, output_dir)
    return out
