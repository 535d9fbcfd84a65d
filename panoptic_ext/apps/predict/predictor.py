"""``PanopticPredictor``: detectron2's ``DefaultPredictor`` that takes any image array and loads
its weights strictly; ``LazyPanopticPredictor``: the same for a Python (LazyConfig) config."""

import contextlib
import logging
from typing import Any, Dict, Iterator

import numpy as np
import torch
from detectron2.config import CfgNode, instantiate
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor

from panoptic_ext.apps.predict.image_input import as_bgr_uint8
from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer
from panoptic_ext.modeling import PanopticFPNWithTTA, bf16_autocast, optimize_for_cpu_inference

__all__ = ["LazyPanopticPredictor", "PanopticPredictor"]

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
    - with ``TEST.CPU_SPEEDUPS`` (default True), a model on the CPU gets
      :func:`~panoptic_ext.modeling.optimize_for_cpu_inference` (same outputs, faster);
    - with ``TEST.CPU_BF16`` (opt-in, default False), a CPU model predicts under bf16 autocast
      (:func:`~panoptic_ext.modeling.bf16_autocast`), refused where the CPU lacks bf16;
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
        PanopticCheckpointer(self.model, allow_partial=cfg.RUN.ALLOW_PARTIAL_WEIGHTS).load(weights)
        if cfg.TEST.CPU_SPEEDUPS and next(self.model.parameters()).device.type == "cpu":
            optimize_for_cpu_inference(self.model)
        if cfg.TEST.AUG.ENABLED:
            self.model = PanopticFPNWithTTA(cfg, self.model)
        self.bf16 = cfg.TEST.CPU_BF16
        bf16_autocast(self.bf16)  # refuses now, not at the first image, on a CPU without bf16

    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        """
        Args:
            original_image (np.ndarray): (H, W), (H, W, 1/2/3/4) image, BGR(A) channel order.

        Returns:
            dict: the model's outputs for the image ("panoptic_seg", ...), at its (H, W).
        """
        with bf16_autocast(self.bf16):
            return super().__call__(as_bgr_uint8(original_image))


class LazyPanopticPredictor:
    """
    :class:`PanopticPredictor` for a Python (LazyConfig) config, as loaded by
    :func:`~panoptic_ext.apps.train.load_lazy_config`: the model of ``cfg.model`` on
    ``cfg.train.device``, weights ``cfg.train.init_checkpoint`` loaded strictly (unless
    ``train.allow_partial_weights``), inputs resized by ``cfg.dataloader.test.mapper
    .augmentations``, CPU speed-ups on a CPU model (unless ``train.cpu_speedups`` is False).
    One BGR image of any shape ``as_bgr_uint8`` takes in, the model's output dict out at the
    image's size.
    """

    def __init__(self, cfg):
        train = cfg.train
        self.cfg = cfg
        self.model = instantiate(cfg.model)
        self.model.to(torch.device(train.device)).eval()
        PanopticCheckpointer(
            self.model, allow_partial=bool(train.get("allow_partial_weights", False))
        ).load(train.init_checkpoint)
        cpu = next(self.model.parameters()).device.type == "cpu"
        if cpu and train.get("cpu_speedups", True):
            optimize_for_cpu_inference(self.model)
        self.augmentations = T.AugmentationList(
            list(instantiate(cfg.dataloader.test.mapper.augmentations))
        )
        self.input_format = getattr(self.model, "input_format", None) or "BGR"

    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        """
        Args:
            original_image (np.ndarray): (H, W), (H, W, 1/2/3/4) image, BGR(A) channel order.

        Returns:
            dict: the model's outputs for the image ("panoptic_seg", ...), at its (H, W).
        """
        with torch.no_grad():
            original_image = as_bgr_uint8(original_image)
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            aug_input = T.AugInput(np.ascontiguousarray(original_image))
            self.augmentations(aug_input)
            image = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
            return self.model([{"image": image, "height": height, "width": width}])[0]
