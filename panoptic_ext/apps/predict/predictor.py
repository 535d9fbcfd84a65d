"""``PanopticPredictor``: detectron2's ``DefaultPredictor`` that takes any image array and loads
its weights strictly."""

import contextlib
import logging
from typing import Any, Dict, Iterator

import numpy as np
from detectron2.config import CfgNode
from detectron2.engine import DefaultPredictor

from panoptic_ext.modeling import PanopticFPNWithTTA, optimize_for_cpu_inference
from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer
from panoptic_ext.apps.predict.image_input import as_bgr_uint8

__all__ = ["PanopticPredictor"]

# fvcore's Checkpointer logs through this logger (also for detectron2's DetectionCheckpointer).
_CHECKPOINTER_LOGGER = "fvcore.common.checkpoint"


@contextlib.contextmanager
def _without_log_records(logger_name: str, message_prefix: str) -> Iterator[None]:
    """Drop the records of ``logger_name`` whose message starts with ``message_prefix``."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(message_prefix)

    logger = logging.getLogger(logger_name)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


class PanopticPredictor(DefaultPredictor):
    """
    ``DefaultPredictor`` (resize to ``INPUT.MIN/MAX_SIZE_TEST``, one image in, one output dict
    out, at the input's size) with two differences:

    - the input may be grayscale, have an alpha channel, be 16-bit, float or bool (see
      :func:`~panoptic_ext.apps.predict.image_input.as_bgr_uint8`); 3/4-channel input is BGR(A);
    - ``MODEL.WEIGHTS`` is loaded with :class:`PanopticCheckpointer`: weights for other class
      counts are an error (not a warning), ``.pth`` files are read with ``weights_only=True``;
    - a model on the CPU gets :func:`~panoptic_ext.modeling.optimize_for_cpu_inference` (same
      outputs, faster);
    - with ``TEST.AUG.ENABLED``, predictions use test-time augmentation
      (:class:`~panoptic_ext.modeling.PanopticFPNWithTTA`, ``TEST.AUG.MIN_SIZES / MAX_SIZE /
      FLIP``, applied to the image resized to ``INPUT.MIN/MAX_SIZE_TEST``).
    """

    def __init__(self, cfg: CfgNode):
        weights = cfg.MODEL.WEIGHTS
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""  # DefaultPredictor would load them leniently
        # ... and say "No checkpoint found. Initializing model from scratch" for the empty path,
        # a misleading line just before the real weights load below.
        with _without_log_records(_CHECKPOINTER_LOGGER, "No checkpoint found"):
            super().__init__(cfg)
        self.cfg.MODEL.WEIGHTS = weights
        PanopticCheckpointer(
            self.model, allow_partial=cfg.RUN.ALLOW_PARTIAL_WEIGHTS
        ).load(weights)
        if next(self.model.parameters()).device.type == "cpu":
            optimize_for_cpu_inference(self.model)
        if cfg.TEST.AUG.ENABLED:
            self.model = PanopticFPNWithTTA(cfg, self.model)

    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        """
        Args:
            original_image (np.ndarray): (H, W), (H, W, 1/2/3/4) image, BGR(A) channel order.

        Returns:
            dict: the model's outputs for the image ("panoptic_seg", ...), at its (H, W).
        """
        return super().__call__(as_bgr_uint8(original_image))
