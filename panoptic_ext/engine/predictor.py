"""``PanopticPredictor``: detectron2's ``DefaultPredictor`` that takes any image array and loads
its weights strictly."""

from typing import Any, Dict

import numpy as np
from detectron2.config import CfgNode
from detectron2.engine import DefaultPredictor

from .checkpoint import PanopticCheckpointer
from .image_input import as_bgr_uint8

__all__ = ["PanopticPredictor"]


class PanopticPredictor(DefaultPredictor):
    """
    ``DefaultPredictor`` (resize to ``INPUT.MIN/MAX_SIZE_TEST``, one image in, one output dict
    out, at the input's size) with two differences:

    - the input may be grayscale, have an alpha channel, be 16-bit, float or bool (see
      :func:`~panoptic_ext.engine.image_input.as_bgr_uint8`); 3/4-channel input is BGR(A);
    - ``MODEL.WEIGHTS`` is loaded with :class:`PanopticCheckpointer`: weights for other class
      counts are an error (not a warning), ``.pth`` files are read with ``weights_only=True``.
    """

    def __init__(self, cfg: CfgNode):
        weights = cfg.MODEL.WEIGHTS
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""  # DefaultPredictor would load them leniently
        super().__init__(cfg)
        self.cfg.MODEL.WEIGHTS = weights
        PanopticCheckpointer(
            self.model, allow_partial=cfg.MODEL.PANOPTIC_EXT.ALLOW_PARTIAL_WEIGHTS
        ).load(weights)

    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        """
        Args:
            original_image (np.ndarray): (H, W), (H, W, 1/2/3/4) image, BGR(A) channel order.

        Returns:
            dict: the model's outputs for the image ("panoptic_seg", ...), at its (H, W).
        """
        return super().__call__(as_bgr_uint8(original_image))
