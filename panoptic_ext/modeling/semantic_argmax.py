"""
Exact per-pixel argmax of upsampled semantic logits, without upsampling every class everywhere.

detectron2's PanopticFPN resizes the semantic head's 1/stride logits twice (``F.interpolate`` by
``stride`` in the head, then :func:`sem_seg_postprocess` crops to the image and resizes to the
output size), and takes the argmax over all classes of the full-resolution result.
:func:`upsampled_argmax` returns exactly that argmax (same labels, first index on ties) in three
tiers, each used only where the previous one cannot prove the winner:

1. Bilinear interpolation is a convex combination of low-resolution pixels. Where every
   low-resolution pixel a full-resolution pixel is interpolated from has the same winning class,
   ahead of the runner-up by more than any float32 rounding error, that class wins.
2. Elsewhere, the few candidate classes of each pixel are interpolated at that pixel only, in
   float64, with the interpolation weights read from the ``F.interpolate`` kernel itself.
3. Near-exact ties (differences within rounding error) are settled with the kernel's own
   float32 values, computed on thin bands (or, if needed, whole planes) of the classes involved.
"""

import functools
import math
from typing import List, NamedTuple, Tuple

import torch
from torch.nn import functional as F

__all__ = [
    "upsampled_logits",
    "upsampled_logits_and_labels",
    "upsampled_argmax_reference",
    "upsampled_argmax",
    "upsampled_labels",
]

# Difference between two classes' float32 interpolated values and their exact values stays below
# ~1e-6 * max|logit| (a few roundings per stage, two stages); the margin demanded is 10x that.
_REL_TOL = 1e-5
# Candidate classes evaluated per undecided pixel in tier 2 (more are handled by tier 3).
_NUM_CANDIDATES = 4
# Tier 3 computes thin row bands only on images at least this many low-res columns wide, where
# the kernel's per-row arithmetic does not depend on the band (checked in the tests).
_MIN_BAND_WIDTH = 32


def upsampled_logits(
    logits: torch.Tensor, stride: float, image_size: Tuple[int, int], output_size: Tuple[int, int]
) -> torch.Tensor:
    """
    detectron2's full-resolution semantic logits: the head's ``F.interpolate(scale_factor=stride)``
    followed by :func:`detectron2.modeling.postprocessing.sem_seg_postprocess`.

    Args:
        logits (Tensor): (C, h, w) logits at 1/stride of the padded input.
        stride (float): the head's common stride.
        image_size (tuple): (height, width) of the input image before padding.
        output_size (tuple): (height, width) of the output.

    Returns:
        Tensor: (C, output_height, output_width) logits.
    """
    from detectron2.modeling.postprocessing import sem_seg_postprocess

    up = F.interpolate(logits[None], scale_factor=stride, mode="bilinear", align_corners=False)[0]
    return sem_seg_postprocess(up, image_size, output_size[0], output_size[1])


def upsampled_logits_and_labels(
    logits: torch.Tensor, stride: float, image_size: Tuple[int, int], output_size: Tuple[int, int]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    :func:`upsampled_logits` and :func:`upsampled_labels` together, each computed once: the
    full-resolution logits (the same values), their argmax and the area of each class.

    Where the output size is the image size, ``sem_seg_postprocess``'s resize is an exact copy
    for finite logits (weights 1 and 0), so the crop is returned without that resize.

    Returns:
        logits (Tensor): (C, output_height, output_width), as :func:`upsampled_logits`.
        labels (Tensor): (output_height, output_width) int32 class indices.
        areas (Tensor): (C,) int64 number of pixels of each class.
    """
    img_h, img_w = (int(v) for v in image_size)
    same_size = (img_h, img_w) == (int(output_size[0]), int(output_size[1]))
    if not same_size or not bool(torch.isfinite(logits).all()):  # inf * 0 is NaN: resize
        full = upsampled_logits(logits, stride, image_size, output_size)
    else:
        up = F.interpolate(logits[None], scale_factor=stride, mode="bilinear", align_corners=False)
        full = up[0, :, :img_h, :img_w]
        full = full if full.is_contiguous() else full.contiguous()
    return (full,) + upsampled_labels(logits, stride, image_size, output_size)


def upsampled_argmax_reference(
    logits: torch.Tensor, stride: float, image_size: Tuple[int, int], output_size: Tuple[int, int]
) -> torch.Tensor:
    """``upsampled_logits(...).argmax(0)``: the plain computation, for reference and tests."""
    return upsampled_logits(logits, stride, image_size, output_size).argmax(dim=0)


class _AxisPlan(NamedTuple):
    """How one output axis is interpolated from the low-resolution axis (through both resizes)."""

    first_source: torch.Tensor  # (n_out,) first low-res index each output index reads
    anchor: torch.Tensor  # (n_out,) start of the window of `size` low-res indices it reads
    weight: torch.Tensor  # (n_out, size) float64 weights of those indices (kernel's own factors)
    count: torch.Tensor  # (n_low - size + 1,) number of output indices of each anchor
    units: torch.Tensor  # (n_low - size + 1, U) units of each anchor, padded with -1
    unit_members: torch.Tensor  # (num_units, G) output indices of each unit, padded with n_out
    size: int  # window size
    identity: bool  # the second resize is the identity along this axis


@functools.lru_cache(maxsize=32)
def _kernel_axis_weights(n_in: int, n_out: int, scale: float, device: str):
    """
    (i0, i1, w0, w1) that ``F.interpolate(mode="bilinear", align_corners=False)`` uses along one
    axis, read from the kernel by resampling an identity matrix (products with 0 and 1 are exact).
    ``scale`` > 0 means ``scale_factor=scale``, else ``size=n_out``.
    """
    eye = torch.eye(n_in, device=device)[None, None]
    if scale > 0:
        probe = F.interpolate(eye, scale_factor=(scale, 1.0), mode="bilinear", align_corners=False)
    else:
        probe = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)
    probe = probe[0, 0]
    if probe.shape[0] != n_out:
        raise RuntimeError(f"Interpolation probe gave {probe.shape[0]} rows, expected {n_out}")
    i0 = (probe != 0).to(torch.uint8).argmax(dim=1)  # first non-zero weight
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w0 = probe.gather(1, i0[:, None])[:, 0].double()
    w1 = torch.where(i1 != i0, probe.gather(1, i1[:, None])[:, 0], 0.0).double()
    return i0, i1, w0, w1


@functools.lru_cache(maxsize=32)
def _axis_plan(n_low: int, stride: float, n_img: int, n_out: int, device: str) -> _AxisPlan:
    n_pad = int(n_low * stride)
    i0, i1, w0, w1 = _kernel_axis_weights(n_low, n_pad, float(stride), device)
    if n_img == n_out:  # sem_seg_postprocess's resize is an exact copy along this axis
        index = torch.stack([i0[:n_out], i1[:n_out]], dim=1)
        weight = torch.stack([w0[:n_out], w1[:n_out]], dim=1)
    else:
        j0, j1, v0, v1 = _kernel_axis_weights(n_img, n_out, 0.0, device)
        index = torch.stack([i0[j0], i1[j0], i0[j1], i1[j1]], dim=1)
        weight = torch.stack([v0 * w0[j0], v0 * w1[j0], v1 * w0[j1], v1 * w1[j1]], dim=1)
    lo, hi = index.min(dim=1).values, index.max(dim=1).values
    size = int((hi - lo).max()) + 1
    anchor = lo.clamp(max=n_low - size)  # non-decreasing, like lo
    dense = torch.zeros((n_out, size), dtype=torch.float64, device=index.device)
    dense.scatter_add_(1, index - anchor[:, None], weight)
    # Output indices sharing an anchor are contiguous; split them into units of at most G (the
    # typical group size, so the rare larger groups at the borders do not pad every unit).
    counts = torch.bincount(anchor, minlength=n_low - size + 1)
    used = counts[counts > 0]
    group = int(used[1:-1].max()) if len(used) > 2 else int(used.max())
    unit_counts = -(-counts // group)
    unit_anchor = torch.repeat_interleave(
        torch.arange(len(counts), device=index.device), unit_counts
    )
    unit_rank = (
        torch.arange(len(unit_anchor), device=index.device)
        - (torch.cumsum(unit_counts, 0) - unit_counts)[unit_anchor]
    )
    starts = (torch.cumsum(counts, 0) - counts)[unit_anchor] + unit_rank * group
    ends = (torch.cumsum(counts, 0))[unit_anchor]
    offsets = torch.arange(group, device=index.device)
    unit_members = starts[:, None] + offsets[None, :]
    unit_members = torch.where(unit_members < ends[:, None], unit_members, n_out)
    max_units = int(unit_counts.max())
    first_unit = torch.cumsum(unit_counts, 0) - unit_counts
    units = first_unit[:, None] + torch.arange(max_units, device=index.device)[None, :]
    rank = torch.arange(max_units, device=index.device)
    units = torch.where(rank[None, :] < unit_counts[:, None], units, -1)
    return _AxisPlan(index[:, 0], anchor, dense, counts, units, unit_members, size, n_img == n_out)


def _window_reduce(x: torch.Tensor, size: Tuple[int, int], op) -> torch.Tensor:
    """op (torch.maximum / torch.minimum) over every size[0] x size[1] window of the last two
    dimensions (stride 1, no padding), as shifted slices: cheaper than pooling for small sizes."""
    for dim, k in ((-2, size[0]), (-1, size[1])):
        n = x.shape[dim] - k + 1
        result = x.narrow(dim, 0, n)
        for offset in range(1, k):
            result = op(result, x.narrow(dim, offset, n))
        x = result
    return x


def _top2(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per pixel: the winning class and its margin over the runner-up (0 on ties)."""
    top1, label = logits.max(dim=0)
    others = logits.clone()
    others.scatter_(0, label[None], float("-inf"))
    return label, top1 - others.amax(dim=0)


def upsampled_argmax(
    logits: torch.Tensor, stride: float, image_size: Tuple[int, int], output_size: Tuple[int, int]
) -> torch.Tensor:
    """
    Exactly ``upsampled_argmax_reference(logits, stride, image_size, output_size)``, computed
    from the low-resolution logits with the shortcuts described in the module docstring.

    Args:
        logits (Tensor): (C, h, w) float logits at 1/stride of the padded input.
        stride (float): the head's common stride (the padded input is ``int(h * stride)`` high).
        image_size (tuple): (height, width) of the input image before padding.
        output_size (tuple): (height, width) of the output.

    Returns:
        Tensor: (output_height, output_width) int64 class indices.
    """
    return upsampled_labels(logits, stride, image_size, output_size)[0].long()


def upsampled_labels(
    logits: torch.Tensor, stride: float, image_size: Tuple[int, int], output_size: Tuple[int, int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    :func:`upsampled_argmax` as int32, with the pixel count of every class (counted from the
    low-resolution windows, without another pass over the output).

    Returns:
        labels (Tensor): (output_height, output_width) int32 class indices.
        areas (Tensor): (C,) int64 number of pixels of each class.
    """
    if logits.dim() != 3 or logits.shape[0] == 0:
        raise ValueError(f"Expected (C, h, w) logits with C > 0, got shape {tuple(logits.shape)}")
    num_classes, h, w = logits.shape
    img_h, img_w = (int(v) for v in image_size)
    out_h, out_w = (int(v) for v in output_size)
    if not (0 < img_h <= int(h * stride) and 0 < img_w <= int(w * stride)):
        raise ValueError(
            f"image_size {tuple(image_size)} does not fit the padded input "
            f"{int(h * stride)}x{int(w * stride)} of logits {tuple(logits.shape)}, stride {stride}"
        )
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"output_size must be positive, got {tuple(output_size)}")
    magnitude = math.nan
    if logits.dtype == torch.float32:
        low, high = torch.aminmax(logits)
        magnitude = max(-float(low), float(high))
    if num_classes == 1 or not math.isfinite(magnitude):
        # NaN / inf logits and other dtypes: the plain computation
        labels = upsampled_argmax_reference(logits, stride, image_size, output_size).int()
        return labels, torch.bincount(labels.flatten().long(), minlength=num_classes)

    device = str(logits.device)
    rows = _axis_plan(h, float(stride), img_h, out_h, device)
    cols = _axis_plan(w, float(stride), img_w, out_w, device)
    tol = _REL_TOL * magnitude

    # Tier 1: windows of low-res pixels sharing one clear winner.
    label, margin = _top2(logits)
    window = (rows.size, cols.size)
    uniform = _window_reduce(label, window, torch.maximum) == _window_reduce(
        label, window, torch.minimum
    )
    clear = _window_reduce(margin, window, torch.minimum) > tol
    decided = uniform & clear
    window_label = torch.where(decided, label[: h - rows.size + 1, : w - cols.size + 1], -1).int()
    # Pixels per window (0 for windows no output pixel reads).
    pixels = rows.count[:, None] * cols.count[None, :]
    # Undecided windows are counted in an extra bin, dropped (cheaper than selecting).
    areas = torch.bincount(
        torch.where(decided, window_label, num_classes).flatten().long(),
        weights=pixels.flatten().double(),
        minlength=num_classes + 1,
    )[:num_classes].long()
    win_y, win_x = torch.nonzero(~decided & (pixels > 0), as_tuple=True)
    # One spare slot at the end takes the writes of padding pixels in _resolve_windows.
    out = torch.empty(out_h * out_w + 1, dtype=torch.int32, device=logits.device)
    torch.index_select(
        window_label[:, cols.anchor], 0, rows.anchor, out=out[:-1].view(out_h, out_w)
    )
    if len(win_y) > 0:
        work = _Work(logits, stride, (img_h, img_w), rows, cols, tol, out, areas)
        _resolve_windows(work, win_y, win_x)
    return out[:-1].view(out_h, out_w), areas


class _Work(NamedTuple):
    """What tiers 2 and 3 read and write."""

    logits: torch.Tensor
    stride: float
    image_size: Tuple[int, int]
    rows: _AxisPlan
    cols: _AxisPlan
    tol: float
    out: torch.Tensor  # flat int32 labels, one spare last slot for padding pixels
    areas: torch.Tensor  # (C,) int64 pixel counts


def _window_values(work: _Work, win_y, win_x, unit_y, unit_x, classes) -> torch.Tensor:
    """
    float64 interpolated values of `classes` ((n, k): per item) at the output pixels of the units
    (unit_y, unit_x) of windows (win_y, win_x): (n, G_rows, G_cols, k); padding pixels give 0.
    """
    rows, cols = work.rows, work.cols
    h, w = work.logits.shape[1:]
    dy = torch.arange(rows.size, device=work.out.device)[None, :, None, None]
    dx = torch.arange(cols.size, device=work.out.device)[None, None, :, None]
    index = (classes[:, None, None, :] * h + win_y[:, None, None, None] + dy) * w
    patch = work.logits.take(index + win_x[:, None, None, None] + dx).double()  # (n, sy, sx, k)
    pad_row = rows.weight.new_zeros((1, rows.size))
    pad_col = cols.weight.new_zeros((1, cols.size))
    w_rows = torch.cat([rows.weight, pad_row])[rows.unit_members[unit_y]]  # (n, G_rows, size_y)
    w_cols = torch.cat([cols.weight, pad_col])[cols.unit_members[unit_x]]  # (n, G_cols, size_x)
    return torch.einsum("ngi,nijk,nhj->nghk", w_rows, patch, w_cols)


def _resolve_windows(work: _Work, win_y: torch.Tensor, win_x: torch.Tensor) -> None:
    """Tiers 2 and 3 for every output pixel of the windows (win_y, win_x)."""
    logits, rows, cols = work.logits, work.rows, work.cols
    num_classes = logits.shape[0]
    # Work items: pairs of row and column units of each window.
    pair_y, pair_x = rows.units[win_y][:, :, None], cols.units[win_x][:, None, :]
    pair_y, pair_x = torch.broadcast_tensors(pair_y, pair_x)
    item = (pair_y >= 0) & (pair_x >= 0)
    win_index = torch.arange(len(win_y), device=logits.device)[:, None, None].expand_as(item)[item]
    win_y, win_x, unit_y, unit_x = win_y[win_index], win_x[win_index], pair_y[item], pair_x[item]
    ys = rows.unit_members[unit_y][:, :, None]
    xs = cols.unit_members[unit_x][:, None, :]
    valid = (ys < len(rows.anchor)) & (xs < len(cols.anchor))  # (n, G, G')
    target = torch.where(valid, ys * len(cols.anchor) + xs, len(work.out) - 1)

    # Candidate classes: the top window maxima. A class outside them interpolates to at most
    # `bound`, the next window maximum (bilinear weights are convex).
    h, w = logits.shape[1:]
    dy = torch.arange(rows.size, device=logits.device)[None, :, None]
    dx = torch.arange(cols.size, device=logits.device)[None, None, :]
    pixel = ((win_y[:, None, None] + dy) * w + win_x[:, None, None] + dx).flatten(1)  # (n, K)
    every_class = torch.arange(num_classes, device=logits.device)[:, None, None] * (h * w)
    window_max = logits.take(every_class + pixel[None]).amax(dim=2).T  # (n, C)
    k = min(_NUM_CANDIDATES, num_classes)
    top_values, top_classes = window_max.topk(min(k + 1, num_classes), dim=1)
    candidates = top_classes[:, :k].sort(dim=1).values
    if num_classes > k:
        bound = top_values[:, k].double()
    else:
        bound = torch.full((len(win_y),), float("-inf"), dtype=torch.float64, device=logits.device)

    # Tier 2: float64 interpolation of the candidates at these pixels; items where another class
    # might still win are evaluated with every class.
    values = _window_values(work, win_y, win_x, unit_y, unit_x, candidates)
    best = values.max(dim=3).values
    unsafe = ((best <= bound[:, None, None] + work.tol) & valid).flatten(1).any(dim=1)
    if not bool(unsafe.any()):
        _decide(work, values, candidates, target)
        return
    safe = ~unsafe
    _decide(work, values[safe], candidates[safe], target[safe])
    every = torch.arange(num_classes, device=logits.device).expand(int(unsafe.sum()), -1)
    values = _window_values(
        work, win_y[unsafe], win_x[unsafe], unit_y[unsafe], unit_x[unsafe], every
    )
    _decide(work, values, every, target[unsafe])


def _decide(work: _Work, values, classes, target) -> None:
    """
    Write the winners of float64 `values` (n, G, G', k) of `classes` (n, k) to the flat output
    positions `target`; pixels whose best classes are within `tol` are settled with the kernel's
    own values (tier 3).
    """
    best, arg = values.max(dim=3)
    labels = classes.gather(1, arg.flatten(1)).view(arg.shape)
    near_best = values >= (best - work.tol)[..., None]  # classes that may still win
    valid = target < len(work.out) - 1
    tie = (near_best.sum(dim=3) > 1) & valid
    if bool(tie.any()):
        num_classes = work.logits.shape[0]
        may_win = torch.zeros((int(tie.sum()), num_classes), dtype=torch.bool, device=tie.device)
        may_win.scatter_(1, classes[:, None, None, :].expand_as(near_best)[tie], near_best[tie])
        width = len(work.cols.anchor)
        labels[tie] = _exact_labels(work, may_win, target[tie] // width, target[tie] % width)
    work.out[target.flatten()] = labels.flatten().int()
    work.areas.add_(torch.bincount(labels[valid], minlength=len(work.areas)))


def _exact_labels(work: _Work, may_win, ys, xs) -> torch.Tensor:
    """
    Per pixel (ys, xs): the argmax, first index on ties, of the kernel's own float32 values over
    the classes marked in `may_win` (P, C) (all other classes are known to be lower there).
    """
    logits, stride, rows = work.logits, work.stride, work.rows
    num_classes, h, w = logits.shape
    result = torch.empty(len(ys), dtype=torch.int64, device=logits.device)
    if _bands_are_exact(rows, work.cols, stride, w):
        first_source = rows.first_source[ys]
        jobs = []
        for lo, hi in _row_bands(first_source, h):
            sel = torch.nonzero((first_source >= lo) & (first_source < hi))[:, 0]
            jobs.append((sel, (lo, hi)))
    else:
        jobs = [(torch.arange(len(ys), device=logits.device), None)]
    for sel, band in jobs:
        classes = torch.nonzero(may_win[sel].any(dim=0))[:, 0]
        if band is None:
            if w < _MIN_BAND_WIDTH:  # tiny images: exactly detectron2's call, every class
                classes = torch.arange(num_classes, device=logits.device)
            output_size = (len(rows.anchor), len(work.cols.anchor))
            full = upsampled_logits(logits[classes], stride, work.image_size, output_size)
            values = full[:, ys[sel], xs[sel]]
        else:
            lo, hi = band
            up = F.interpolate(
                logits[classes, lo:hi][None],
                scale_factor=stride,
                mode="bilinear",
                align_corners=False,
            )[0]
            values = up[:, ys[sel] - lo * int(stride), xs[sel]]
        values = values.masked_fill(~may_win[sel][:, classes].T, float("-inf"))
        result[sel] = classes[values.argmax(dim=0)]
    return result


def _bands_are_exact(rows: _AxisPlan, cols: _AxisPlan, stride: float, w: int) -> bool:
    """Row bands reproduce the full call when no second resize happens, the stride is a power of
    two (so band-local source coordinates are exact shifts) and rows are wide."""
    power_of_two = float(stride).is_integer() and int(stride) & (int(stride) - 1) == 0
    return rows.identity and cols.identity and power_of_two and w >= _MIN_BAND_WIDTH


def _row_bands(first_source: torch.Tensor, h: int) -> List[Tuple[int, int]]:
    """
    Disjoint low-res row ranges [lo, hi) whose upsampling yields exactly the output rows whose
    first source row is `first_source`, each in the band holding that row: a band covers both
    source rows plus one row below, so its own bottom clamping never reaches a needed row (and
    shifts by whole low-res rows keep the source coordinates exact).
    """
    needed = torch.unique(first_source).tolist()
    bands: List[Tuple[int, int]] = []
    for r in needed:
        lo, hi = r, min(r + 3, h)
        if bands and lo <= bands[-1][1]:
            bands[-1] = (bands[-1][0], max(bands[-1][1], hi))
        else:
            bands.append((lo, hi))
    return bands
