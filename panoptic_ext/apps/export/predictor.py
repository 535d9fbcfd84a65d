"""``PanopticONNXPredictor``: ``DefaultPredictor`` for an exported model."""

from typing import Any, Dict, Optional, Sequence

import numpy as np
from detectron2.data import transforms as T

from panoptic_ext.apps.predict.image_input import as_bgr_uint8
from panoptic_ext.apps.export.runtime import ExportedPanopticModel

__all__ = ["PanopticONNXPredictor"]


class PanopticONNXPredictor:
    """
    detectron2's ``DefaultPredictor`` for a directory written by ``tools/export_model.py``: one
    BGR image (any shape :func:`~panoptic_ext.apps.predict.image_input.as_bgr_uint8` takes) in,
    resized as the exported config's ``INPUT.MIN/MAX_SIZE_TEST``, and the model's output dict
    out at the image's size: ``panoptic_seg`` (panoptic_seg, segments_info with the dataset's
    category ids), plus ``sem_seg`` / ``instances`` when the config returns them. ONNX exports
    run on ONNX Runtime (CUDA when onnxruntime-gpu and a GPU are present, else CPU); TorchScript
    exports on torch.

    Args:
        model_dir (str): the export directory.
        providers (list[str]): ONNX Runtime providers, e.g. ``["CPUExecutionProvider"]``.
        num_threads (int): ONNX Runtime intra-op threads.
        device (str): the torch device of a TorchScript export.
    """

    def __init__(
        self,
        model_dir: str,
        providers: Optional[Sequence[str]] = None,
        num_threads: Optional[int] = None,
        device: str = "cpu",
    ):
        self.model = ExportedPanopticModel(model_dir, providers, num_threads, device)
        size = self.model.meta["input"]
        self.input_format = size["format"]
        self.aug = T.ResizeShortestEdge(
            [size["min_size_test"], size["min_size_test"]], size["max_size_test"]
        )

    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        """
        Args:
            original_image (np.ndarray): (H, W), (H, W, 1/2/3/4) image, BGR(A) channel order.

        Returns:
            dict: the model's outputs for the image, at its (H, W).
        """
        original_image = as_bgr_uint8(original_image)
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        image = image.astype("float32").transpose(2, 0, 1)
        return self.model([{"image": image, "height": height, "width": width}])[0]
