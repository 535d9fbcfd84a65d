"""
``export_model``: write a ``PanopticFPNExt`` as an ONNX or TorchScript network plus
``export.json`` (what inference needs: input format and sizes, classes, label space and the
host-side post-processor's options) and the model's ``config.yaml``.
"""

import json
import logging
import os
import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer
from panoptic_ext.apps.predict.image_input import read_image_bgr
from panoptic_ext.modeling.panoptic_postprocessor import PANOPTIC_POSTPROCESSOR_REGISTRY
from panoptic_ext.apps.export.metadata import (
    EXPORT_FILE,
    EXPORT_SCHEMA,
    FORMATS,
    MIN_OPSET,
    export_identity,
    project_version,
)
from panoptic_ext.apps.export.network import OUTPUT_NAMES, ExportableNetwork

__all__ = ["export_model", "DEFAULT_OPSET"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def _postprocessor_spec(cfg: CfgNode) -> Dict[str, Any]:
    name = cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.NAME
    kwargs = PANOPTIC_POSTPROCESSOR_REGISTRY.get(name).from_config(cfg)
    return {"name": name, "kwargs": json.loads(json.dumps(kwargs))}  # tuples -> lists


def _classes(cfg: CfgNode) -> Dict[str, Any]:
    """Class names and the dataset's id mappings of the test dataset, when registered."""
    if not len(cfg.DATASETS.TEST) or cfg.DATASETS.TEST[0] not in MetadataCatalog.list():
        return {"dataset": None}
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    out: Dict[str, Any] = {"dataset": cfg.DATASETS.TEST[0]}
    for key in ("thing_classes", "stuff_classes"):
        if hasattr(metadata, key):
            out[key] = list(getattr(metadata, key))
    for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
        if hasattr(metadata, key):
            out[key] = {str(k): int(v) for k, v in getattr(metadata, key).items()}
    return out


def _sample_image(cfg: CfgNode, sample_image: Optional[str]) -> np.ndarray:
    """(H, W, 3) uint8 in INPUT.FORMAT, resized as the predictor resizes."""
    if sample_image:
        image = read_image_bgr(sample_image)
    else:  # a smooth random image: detections of some size, not only noise
        rng = np.random.default_rng(0)
        h, w = cfg.INPUT.MIN_SIZE_TEST, int(cfg.INPUT.MIN_SIZE_TEST * 4 / 3)
        small = rng.integers(0, 256, (max(h // 16, 1), max(w // 16, 1), 3), dtype=np.uint8)
        image = np.kron(small, np.ones((16, 16, 1), dtype=np.uint8))[:h, :w]
    if cfg.INPUT.FORMAT == "RGB":
        image = image[:, :, ::-1]
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    return np.ascontiguousarray(aug.get_transform(image).apply_image(image))


def _export_onnx(net, image: torch.Tensor, path: str, opset: int, props: Dict[str, str]) -> None:
    import onnx  # noqa: F401  (torch.onnx needs it; fail early with its ImportError)

    dynamic = {"image": {1: "height", 2: "width"}, "sem_seg": {2: "sem_height", 3: "sem_width"}}
    for name in ("boxes", "scores", "classes"):
        dynamic[name] = {0: "detections"}
    dynamic["mask_rows"] = dynamic["masks"] = {0: "masks"}
    torch.onnx.export(
        net,
        (image,),
        path,
        opset_version=opset,
        input_names=["image"],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes=dynamic,
        dynamo=False,  # the dynamo exporter fails on detectron2's data-dependent R-CNN code
    )
    model = onnx.load(path)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, path)


def export_model(
    cfg: CfgNode,
    output_dir: str,
    fmt: str = "onnx",
    sample_image: Optional[str] = None,
    opset: int = DEFAULT_OPSET,
    max_size: Optional[int] = None,
) -> Dict[str, Any]:
    """
    Export the network of ``cfg`` (weights ``cfg.MODEL.WEIGHTS``, loaded strictly) to
    ``output_dir``: ``model.onnx`` or ``model.ts``, ``export.json`` and ``config.yaml``.

    Args:
        cfg (CfgNode): the model's config (a ``PanopticFPNExt``).
        output_dir (str): created if missing.
        fmt (str): "onnx" (ONNX Runtime) or "torchscript" (``torch.jit.trace``).
        sample_image (str): image file to trace with (default: a generated image).
        opset (int): ONNX opset (>= 16: ROIAlign with aligned=True).
        max_size (int): largest input height and width accepted (default INPUT.MAX_SIZE_TEST).

    Returns:
        dict: the contents of ``export.json``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is too old: ROIAlign with aligned=True needs opset >= {MIN_OPSET}"
        )
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    net = ExportableNetwork(model).eval()  # refuses what it cannot export, before loading
    if cfg.MODEL.WEIGHTS:
        PanopticCheckpointer(
            model, allow_partial=cfg.RUN.ALLOW_PARTIAL_WEIGHTS
        ).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting a randomly initialized model")
    max_size = int(max_size or cfg.INPUT.MAX_SIZE_TEST)
    sample = _sample_image(cfg, sample_image)
    if max(sample.shape[:2]) > max_size:
        raise ValueError(f"the sample image {sample.shape[:2]} exceeds max_size {max_size}")
    image = torch.as_tensor(sample.astype("float32").transpose(2, 0, 1))

    os.makedirs(output_dir, exist_ok=True)
    meta = {
        "export_schema": EXPORT_SCHEMA,
        "panoptic_ext_version": project_version(),
        "format": fmt,
        "file": FORMATS[fmt],
        "opset": opset if fmt == "onnx" else None,
        "torch_version": torch.__version__,
        "weights": cfg.MODEL.WEIGHTS,
        "input": {
            "name": "image",
            "layout": "CHW float32, unnormalized, batch size 1",
            "format": cfg.INPUT.FORMAT,
            "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
            "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
            "max_size": max_size,
            "sample_size": list(sample.shape[:2]),
        },
        "outputs": list(OUTPUT_NAMES),
        "sem_seg_stride": int(model.sem_seg_head.common_stride),
        "postprocessor": _postprocessor_spec(cfg),
        "classes": _classes(cfg),
    }
    props = {"panoptic_ext_export": json.dumps(export_identity(meta))}
    path = os.path.join(output_dir, meta["file"])
    with torch.no_grad(), warnings.catch_warnings():
        # detectron2's asserts and shape reads warn while traced; the outputs are checked by
        # the tests (other sizes and detection counts than the sample's)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if fmt == "onnx":
            _export_onnx(net, image, path, opset, props)
        else:
            traced = torch.jit.trace(net, (image,), check_trace=False)
            torch.jit.save(
                traced, path, _extra_files={"panoptic_ext_export": props["panoptic_ext_export"]}
            )
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    with open(os.path.join(output_dir, EXPORT_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    logger.info("Exported %s (%s) to %s", cfg.MODEL.META_ARCHITECTURE, fmt, output_dir)
    return meta
