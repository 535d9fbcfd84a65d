"""
``export_model``: write a ``PanopticFPNExt`` as an ONNX or TorchScript network plus
``export.json`` (what inference needs: input format and sizes, classes, label space, the
host-side post-processor's options, and the model file's sha256) and the model's ``config.yaml``.

An export is written into a temporary sibling folder and then moved in place, so the output
folder holds one whole export or none, even if the export is interrupted.
"""

import json
import logging
import os
import shutil
import tempfile
import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch

from panoptic_ext.apps.export.folding import fold_frozen_batchnorm
from panoptic_ext.apps.export.metadata import (
    EXPORT_FILE,
    EXPORT_SCHEMA,
    FORMATS,
    MIN_OPSET,
    ExportError,
    export_identity,
    file_digest,
    project_version,
)
from panoptic_ext.apps.export.network import OUTPUT_NAMES, ExportableNetwork
from panoptic_ext.apps.export.sources import ExportSource, export_source
from panoptic_ext.apps.predict.image_input import read_image_bgr
from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer

__all__ = ["export_model", "DEFAULT_OPSET"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def _sample_image(source: ExportSource, sample_image: Optional[str]) -> np.ndarray:
    """(H, W, 3) uint8 in the input format, resized as the predictor resizes."""
    from detectron2.data import transforms as T

    if sample_image:
        image = read_image_bgr(sample_image)
    else:  # a smooth random image: detections of some size, not only noise
        rng = np.random.default_rng(0)
        h, w = source.min_size_test, int(source.min_size_test * 4 / 3)
        small = rng.integers(0, 256, (max(h // 16, 1), max(w // 16, 1), 3), dtype=np.uint8)
        image = np.kron(small, np.ones((16, 16, 1), dtype=np.uint8))[:h, :w]
    if source.input_format == "RGB":
        image = image[:, :, ::-1]
    aug = T.ResizeShortestEdge([source.min_size_test] * 2, source.max_size_test)
    return np.ascontiguousarray(aug.get_transform(image).apply_image(image))


def _check_max_size(source: ExportSource, max_size: Optional[int]) -> int:
    """The largest input side the export accepts: at least the test-time resize's largest."""
    largest = max(source.max_size_test, source.min_size_test)
    if max_size is None:
        return largest
    if int(max_size) < largest:
        raise ValueError(
            f"--max-size {max_size} is below the config's test size ({source.max_size_key} = "
            f"{source.max_size_test}, shortest edge {source.min_size_test}): the export would "
            f"refuse the images its own predictor resizes to up to {largest} pixels; use "
            f"--max-size {largest} or more, or lower {source.max_size_key}"
        )
    return int(max_size)


def _load_weights(source: ExportSource, allow_random_weights: bool) -> bool:
    """Load the source's weights; returns whether the model keeps random weights."""
    if source.weights:
        PanopticCheckpointer(source.model, allow_partial=source.allow_partial_weights).load(
            source.weights
        )
        return False
    if not allow_random_weights:
        raise ExportError(
            f"{source.weights_key} is empty: the export would hold a randomly initialized "
            "model. Give the trained weights (--weights FILE), or --allow-random-weights for "
            "a smoke test (the export is then marked as random in export.json)"
        )
    logger.warning(
        "%s is empty: exporting a RANDOMLY INITIALIZED model (marked in export.json; its "
        "predictions mean nothing)",
        source.weights_key,
    )
    return True


def _prepare_output_dir(output_dir: str) -> str:
    """Refuse an output folder that holds something other than an earlier export; returns the
    parent folder, where the temporary folder is made (same file system: rename is atomic)."""
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir):
        if not os.path.isdir(output_dir):
            raise ExportError(f"--output {output_dir} exists and is not a folder")
        entries = os.listdir(output_dir)
        if entries and EXPORT_FILE not in entries:
            raise ExportError(
                f"--output {output_dir} holds files that are not an export ({sorted(entries)[:5]}"
                f"{' ...' if len(entries) > 5 else ''}): an export replaces its whole folder; "
                "choose an empty or new folder"
            )
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    return parent


def _sync_files(folder: str) -> None:
    """Flush the folder's files to disk before it is moved in place (a crash after the rename
    must not leave a folder of empty files)."""
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _move_into_place(tmp_dir: str, output_dir: str) -> None:
    """Replace ``output_dir`` (absent, empty or an earlier export) by ``tmp_dir``: the folder
    holds the earlier export, then nothing for an instant, then the new one; never a mix."""
    output_dir = os.path.abspath(output_dir)
    old = None
    if os.path.exists(output_dir):
        extra = sorted(
            set(os.listdir(output_dir)) - {EXPORT_FILE, "config.yaml", *FORMATS.values()}
        )
        if extra:
            logger.warning(
                "Replacing the earlier export in %s with its %s (they describe the earlier model)",
                output_dir,
                extra,
            )
        old = tempfile.mkdtemp(
            prefix=f".{os.path.basename(output_dir)}.old-", dir=os.path.dirname(output_dir)
        )
        os.rename(output_dir, os.path.join(old, "export"))
    os.rename(tmp_dir, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    cfg,
    output_dir: str,
    fmt: str = "onnx",
    sample_image: Optional[str] = None,
    opset: int = DEFAULT_OPSET,
    max_size: Optional[int] = None,
    *,
    allow_random_weights: bool = False,
    fold_batchnorm: bool = True,
) -> Dict[str, Any]:
    """
    Export the network of ``cfg`` (weights ``MODEL.WEIGHTS`` / ``train.init_checkpoint``, loaded
    strictly) to ``output_dir``: ``model.onnx`` or ``model.ts``, ``export.json`` and
    ``config.yaml``. The folder is replaced as a whole when the export is complete; until then it
    keeps what it held (nothing, or an earlier export).

    Args:
        cfg (CfgNode or DictConfig): the model's config (a ``PanopticFPNExt``), YAML or Python.
        output_dir (str): a new, empty or earlier export's folder.
        fmt (str): "onnx" (ONNX Runtime) or "torchscript" (``torch.jit.trace``).
        sample_image (str): image file to trace with (default: a generated image).
        opset (int): ONNX opset (>= 16: ROIAlign with aligned=True).
        max_size (int): largest input height and width accepted (default: the config's test
            size; a smaller one is refused).
        allow_random_weights (bool): export a model without weights (smoke tests); refused
            otherwise. The export is marked ``"random_weights": true``.
        fold_batchnorm (bool): fold frozen batch norms into the convolutions (exact up to
            float rounding; fewer operators to run).

    Returns:
        dict: the contents of ``export.json``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is too old: ROIAlign with aligned=True needs opset >= {MIN_OPSET}"
        )
    parent = _prepare_output_dir(output_dir)
    source = export_source(cfg)
    max_size = _check_max_size(source, max_size)
    net = ExportableNetwork(source.model).eval()  # refuses what it cannot export, before loading
    random_weights = _load_weights(source, allow_random_weights)
    folded = fold_frozen_batchnorm(source.model) if fold_batchnorm else 0
    sample = _sample_image(source, sample_image)
    if max(sample.shape[:2]) > max_size:
        raise ValueError(f"the sample image {sample.shape[:2]} exceeds max_size {max_size}")
    image = torch.as_tensor(sample.astype("float32").transpose(2, 0, 1))
    meta = {
        "export_schema": EXPORT_SCHEMA,
        "panoptic_ext_version": project_version(),
        "format": fmt,
        "file": FORMATS[fmt],
        "opset": opset if fmt == "onnx" else None,
        "torch_version": torch.__version__,
        "weights": source.weights,
        "random_weights": random_weights,
        "folded_batchnorms": folded,
        "config": {"file": "config.yaml", "language": source.config_language},
        "input": {
            "name": "image",
            "layout": "CHW float32, unnormalized, batch size 1",
            "format": source.input_format,
            "min_size_test": source.min_size_test,
            "max_size_test": source.max_size_test,
            "max_size": max_size,
            "sample_size": list(sample.shape[:2]),
        },
        "outputs": list(OUTPUT_NAMES),
        "sem_seg_stride": int(source.model.sem_seg_head.common_stride),
        "postprocessor": source.postprocessor,
        "classes": source.classes,
    }
    props = {"panoptic_ext_export": json.dumps(export_identity(meta))}
    tmp_dir = tempfile.mkdtemp(
        prefix=f".{os.path.basename(os.path.abspath(output_dir))}.tmp-", dir=parent
    )
    try:
        path = os.path.join(tmp_dir, meta["file"])
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
        meta["model_file"] = file_digest(path)
        with open(os.path.join(tmp_dir, "config.yaml"), "w") as f:
            f.write(source.config_text)
        with open(os.path.join(tmp_dir, EXPORT_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        _sync_files(tmp_dir)
        _move_into_place(tmp_dir, output_dir)
    finally:
        if os.path.exists(tmp_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info("Exported %s (%s) to %s", type(source.model).__name__, fmt, output_dir)
    return meta
