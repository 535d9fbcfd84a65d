"""``PanopticONNXPredictor``: ``DefaultPredictor`` for an exported model."""

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T

from panoptic_ext.apps.export.runtime import ExportedPanopticModel
from panoptic_ext.apps.predict.image_input import as_bgr_uint8

__all__ = ["PanopticONNXPredictor"]


class PanopticONNXPredictor:
    """
    detectron2's ``DefaultPredictor`` for a directory written by ``tools/export_model.py``: one
    BGR image (any shape :func:`~panoptic_ext.apps.predict.image_input.as_bgr_uint8` takes) in,
    resized as the exported config's ``INPUT.MIN/MAX_SIZE_TEST``, and the model's output dict
    out at the image's size: ``panoptic_seg`` (panoptic_seg, segments_info with the dataset's
    category ids), plus ``sem_seg`` / ``instances`` when the config returns them. ONNX exports
    run on ONNX Runtime (CUDA when onnxruntime-gpu and a GPU are present, else CPU); TorchScript
    exports on torch. Images of any shape are accepted: a side that the resize would round to
    0 pixels (a very thin image) is given 1 pixel, so the resized image always fits the export.

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
        self.min_size, self.max_size = int(size["min_size_test"]), int(size["max_size_test"])

    @property
    def random_weights(self) -> bool:
        """Whether the export holds a randomly initialized model (exported with
        ``--allow-random-weights``): callers such as the demo should warn."""
        return self.model.random_weights

    def resized_shape(self, height: int, width: int) -> Tuple[int, int]:
        """The (height, width) an image of ``height`` x ``width`` is resized to (each >= 1)."""
        h, w = T.ResizeShortestEdge.get_output_shape(height, width, self.min_size, self.max_size)
        return max(int(h), 1), max(int(w), 1)

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
        new_h, new_w = self.resized_shape(height, width)
        image = T.ResizeTransform(height, width, new_h, new_w).apply_image(original_image)
        image = image.astype("float32").transpose(2, 0, 1)
        return self.model([{"image": image, "height": height, "width": width}])[0]
