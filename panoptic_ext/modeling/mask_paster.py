"""
Pasting soft instance masks into the image one region at a time, bit for bit as detectron2's
``paste_masks_in_image``, for a fusion that reads only some instances' masks.
"""

from typing import Tuple

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["MaskPaster"]


class MaskPaster:
    """
    Pastes soft masks into the image, one instance at a time and only in the region around its
    box, with the arithmetic of detectron2's ``paste_masks_in_image`` on the CPU (same region,
    same sampling grid rounded to the masks' dtype, the same ``grid_sample`` call per instance),
    so the masks are equal bit for bit. The grids of all instances are computed together up
    front, which saves most of the per-instance overhead.

    ``paster(i) -> (bool mask of the region, (rows, cols))``. For float32 masks on the CPU the
    mask is a numpy array: the fusion's per-instance work runs in numpy (single-threaded small
    operations, which stay fast when a busy machine makes every OpenMP parallel region slow).
    Otherwise (other dtypes, e.g. under autocast, or another device) it is a tensor on the masks'
    device. Pixels outside the region are not in the mask.
    """

    def __init__(
        self,
        mask_probs: torch.Tensor,
        boxes: torch.Tensor,
        image_size: Tuple[int, int],
        threshold: float = 0.5,
    ):
        """
        Args:
            mask_probs (Tensor): (N, M, M) mask probabilities.
            boxes (Tensor): (N, 4) boxes (x0, y0, x1, y1) in output coordinates.
            image_size (tuple): (height, width) of the output.
            threshold (float): probability at or above which a pixel is in the mask.
        """
        if mask_probs.dim() != 3 or boxes.shape != (len(mask_probs), 4):
            raise ValueError(
                f"Expected (N, M, M) masks and (N, 4) boxes, got {tuple(mask_probs.shape)} and "
                f"{tuple(boxes.shape)}"
            )
        # outside torch.no_grad() the head's outputs require grad: the pasted masks are
        # thresholded (no gradient) either way
        mask_probs, boxes = mask_probs.detach(), boxes.detach()
        self.mask_probs = mask_probs if mask_probs.is_floating_point() else mask_probs.float()
        self.threshold = threshold
        self.use_numpy = self.mask_probs.dtype == torch.float32 and mask_probs.device.type == "cpu"
        height, width = (int(v) for v in image_size)
        self.image_size = (height, width)
        # detectron2's _do_paste_mask region for one box: floor(x0) - 1 .. ceil(x1) + 1, clipped.
        start = torch.clamp(boxes[:, :2].floor() - 1, min=0).to(torch.int64)
        stop_x = torch.clamp(boxes[:, 2].ceil() + 1, max=width).to(torch.int64)
        stop_y = torch.clamp(boxes[:, 3].ceil() + 1, max=height).to(torch.int64)
        bounds = torch.stack([start[:, 0], start[:, 1], stop_x, stop_y], dim=1).tolist()
        self.bounds = [tuple(b) for b in bounds]  # one transfer for all instances
        x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
        # as detectron2: the grid in float32, then converted to the masks' dtype
        grid_x = self._coordinates(start[:, 0], stop_x, x0, x1).to(self.mask_probs.dtype)
        grid_y = self._coordinates(start[:, 1], stop_y, y0, y1).to(self.mask_probs.dtype)
        if self.use_numpy:
            self.grid_x, self.grid_y = grid_x.numpy(), grid_y.numpy()
        else:
            self.grid_x, self.grid_y = grid_x, grid_y

    @staticmethod
    def _coordinates(start, stop, low, high) -> torch.Tensor:
        """Each instance's normalized sampling coordinates, (N, longest region) padded."""
        length = int((stop - start).max()) if len(start) else 0
        pixel = start[:, None] + torch.arange(length, device=start.device)[None, :]
        pixel = pixel.to(torch.float32) + 0.5
        return (pixel - low) / (high - low) * 2 - 1  # the same float ops, in the same order

    def region(self, i: int) -> Tuple[slice, slice]:
        """(rows, cols) of instance i's region: detectron2's pasting region around its box."""
        x0, y0, x1, y1 = self.bounds[i]
        return slice(y0, y1), slice(x0, x1)

    def __call__(self, i: int):
        x0, y0, x1, y1 = self.bounds[i]
        rows, cols = slice(y0, y1), slice(x0, x1)
        h, w = y1 - y0, x1 - x0
        if self.use_numpy:
            grid = np.empty((1, h, w, 2), dtype=self.grid_x.dtype)
            grid[0, :, :, 0] = self.grid_x[i, None, :w]
            grid[0, :, :, 1] = self.grid_y[i, :h, None]
            grid = torch.from_numpy(grid)
        else:
            grid = torch.stack(
                [self.grid_x[i, None, :w].expand(h, w), self.grid_y[i, :h, None].expand(h, w)],
                dim=-1,
            )[None]
        pasted = F.grid_sample(self.mask_probs[i][None, None], grid, align_corners=False)
        mask = pasted[0, 0] >= self.threshold
        return (mask.numpy() if self.use_numpy else mask), (rows, cols)

    def paste_all(self) -> torch.Tensor:
        """
        Every instance's full-image mask: (N, H, W) bool, as detectron2's
        ``paste_masks_in_image`` (zeros outside each region).
        """
        n, (height, width) = len(self.bounds), self.image_size
        if self.use_numpy:
            masks = np.zeros((n, height, width), dtype=bool)  # calloc'ed: untouched pages free
        else:
            masks = torch.zeros((n, height, width), dtype=torch.bool, device=self.mask_probs.device)
        for i in range(n):
            mask, (rows, cols) = self(i)
            masks[i, rows, cols] = mask
        return torch.from_numpy(masks) if self.use_numpy else masks
