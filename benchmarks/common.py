"""Shared pieces of the benchmark suite: the result row, side-by-side timing, peak memory, and
models with the same calibrated random weights on both sides.

Every benchmark module exposes ``run(quick: bool = False) -> list[dict]`` (or a documented
equivalent that ``run_all.py`` adapts to) and returns rows made by :func:`make_row`.

The benchmark scripts are run from the repository root as ``python benchmarks/<name>.py``;
Python then puts ``benchmarks/`` on ``sys.path``, so they import each other as top-level modules
(``from common import make_row``).

Every figure is a ratio measured side by side in one process (ours and the reference
alternate: A B B A A B ...), because these machines are shared and absolute times swing.
"""

import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from panoptic_ext.modeling.cpu_inference import cpu_flags, cpu_supports_bf16

__all__ = [
    "make_row",
    "time_interleaved",
    "median",
    "min_ratio",
    "reset_peak_rss",
    "peak_rss_mb",
    "current_rss_mb",
    "run_worker",
    "emit_worker_result",
    "reference_cfg",
    "ours_cfg",
    "synthetic_image",
    "inference_inputs",
    "calibrate_random_weights_",
    "calibrated_state_dict",
    "build_with_weights",
    "panoptic_outputs_equal",
    "cpu_flags",
    "cpu_supports_bf16",
    "machine_limit",
    "measure_machine_limit",
    "throughput",
    "BENCH_DIR",
    "REPO_ROOT",
]

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)


def make_row(
    benchmark: str,
    workload: str,
    repeats: int,
    reference: str,
    *,
    ours_s: Optional[float] = None,
    reference_s: Optional[float] = None,
    ratio: Optional[float] = None,
    target: Optional[float] = None,
    unit: str = "s",
    **extra: Any,
) -> Dict[str, Any]:
    """
    One result row.

    Args:
        benchmark (str): the benchmark group ("postprocess", "inference", "train_step", "pq",
            "flops", "scaling", ...).
        workload (str): what was run, with sizes (e.g. "100 dets, 800x1216").
        repeats (int): timed runs per variant (after warm-up); medians are reported.
        reference (str): what "ours" is compared with (e.g. "detectron2 PanopticFPN").
        ours_s (float): median time of ours in seconds (None for non-time rows).
        reference_s (float): median time of the reference in seconds.
        ratio (float): ours / reference; computed from the times when not given.
        target (float): the ratio must be at most this to meet the target; None = report only.
        unit (str): unit of the compared quantity ("s", "GFLOPs", "M params", ...). For units
            other than seconds put the values in ``ours_value`` / ``reference_value``.
        extra: other fields (peak memory in MB, identical-output checks, ...), JSON-serialisable.

    Returns:
        dict with the keys above plus ``met`` (bool, or None when there is no target).
    """
    if ratio is None and ours_s is not None and reference_s:
        ratio = ours_s / reference_s
    met = None if target is None or ratio is None else bool(ratio <= target)
    if extra.get("identical") is False:
        met = False  # a speed-up with different outputs does not count
    row = {
        "benchmark": benchmark,
        "workload": workload,
        "repeats": int(repeats),
        "reference": reference,
        "unit": unit,
        "ours_s": ours_s,
        "reference_s": reference_s,
        "ratio": ratio,
        "target": target,
        "met": met,
    }
    row.update(extra)
    return row


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def min_ratio(times: Mapping[str, Sequence[float]], ours: str, reference: str) -> float:
    """Ratio of the fastest runs: load from other processes only adds time, so with few repeats
    on a busy machine this is the steadier companion of the ratio of medians."""
    return min(times[ours]) / min(times[reference])


def time_interleaved(
    variants: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    cpu_times: Optional[Dict[str, List[float]]] = None,
) -> Dict[str, List[float]]:
    """
    Time several callables side by side: each round runs every variant once, and the order
    alternates between rounds (A B, B A, A B, ...) so a load change hits both alike.

    Args:
        variants (dict[str, callable]): name -> zero-argument function to time.
        repeats (int): timed rounds.
        warmup (int): untimed rounds first (allocator, caches, lazy imports).
        cpu_times (dict): if given, filled with name -> this process's CPU seconds per timed
            run (all threads), which other processes' load disturbs less than wall time.

    Returns:
        dict name -> list of ``repeats`` wall-clock times in seconds.
    """
    names = list(variants)
    times: Dict[str, List[float]] = {n: [] for n in names}
    if cpu_times is not None:
        cpu_times.update({n: [] for n in names})
    for i in range(warmup + repeats):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            cpu_start = time.process_time()
            start = time.perf_counter()
            variants[name]()
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            if i >= warmup:
                times[name].append(elapsed)
                if cpu_times is not None:
                    cpu_times[name].append(cpu)
    return times


def _read_status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's RSS high-water mark in MB (since start or the last :func:`reset_peak_rss`)."""
    kb = _read_status_kb("VmHWM")
    if kb is None:  # not Linux: lifetime peak only
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0


def current_rss_mb() -> float:
    kb = _read_status_kb("VmRSS")
    return (kb or 0) / 1024.0


_RESULT_PREFIX = "BENCH_WORKER_RESULT "


def emit_worker_result(result: Mapping[str, Any]) -> None:
    """Print a worker's result on one tagged stdout line for :func:`run_worker`."""
    sys.stdout.write(_RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_worker(script: str, args: Sequence[str], timeout: float = 1800) -> Dict[str, Any]:
    """
    Run ``benchmarks/<script> --worker ARGS`` in a fresh Python process and return the dict it
    emitted with :func:`emit_worker_result`. Fresh processes give each variant its own memory
    high-water mark (torch's allocations are invisible to tracemalloc).

    Raises:
        RuntimeError: the worker failed or emitted no result (its stderr tail is included).
    """
    cmd = [sys.executable, os.path.join(BENCH_DIR, script), "--worker", *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    tail = "\n".join(proc.stderr.splitlines()[-20:])
    raise RuntimeError(f"benchmark worker {' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")


# ---------------------------------------------------------------------------------------------
# Models with the same (random, calibrated) weights on both sides, and synthetic inputs.
# ---------------------------------------------------------------------------------------------

PANOPTIC_ZOO_CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
OURS_CONFIG = os.path.join(REPO_ROOT, "configs", PANOPTIC_ZOO_CONFIG)

# Standard deviations given to the box classifier's and mask predictor's logits on the calibration
# image, so that a randomly initialised model's scores and masks look like a trained model's
# (see calibrate_random_weights_). With 2.5, R50 at 800x1216 keeps 100 detections of which ~40
# score above the panoptic fusion's 0.5 threshold (like scores spread over [0, 1]).
_CLS_LOGIT_STD = 2.5
_MASK_LOGIT_STD = 10.0

# --quick (smoke test) models: a tiny R18-FPN with narrow heads, same structure on both sides.
TINY_MODEL = [
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 300,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 200,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
]  # fmt: skip


def reference_cfg(config_file: str = PANOPTIC_ZOO_CONFIG, tiny: bool = False):
    """
    detectron2's model-zoo config (a path relative to the zoo) on the CPU, no weights; ``tiny``
    shrinks the model (TINY_MODEL) for smoke tests.
    """
    from detectron2.config import get_cfg

    from panoptic_ext import add_panoptic_ext_config
    from panoptic_ext.compat import model_zoo_config_file

    cfg = get_cfg()
    add_panoptic_ext_config(cfg)
    cfg.merge_from_file(model_zoo_config_file(config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    if tiny:
        cfg.merge_from_list(TINY_MODEL)
    return cfg


def ours_cfg(tiny: bool = False, **postprocess):
    """
    panoptic_ext's R50 Panoptic FPN config (configs/COCO-PanopticSegmentation/...), CPU, no
    weights; ``postprocess`` sets keys of MODEL.PANOPTIC_EXT.POSTPROCESS (e.g. RETURN_SEM_SEG);
    ``tiny`` as in :func:`reference_cfg`.
    """
    from detectron2.config import get_cfg

    from panoptic_ext import add_panoptic_ext_config

    if os.path.isfile(OURS_CONFIG):
        cfg = get_cfg()
        add_panoptic_ext_config(cfg)
        cfg.merge_from_file(OURS_CONFIG)
    else:  # the project's own config is missing: the contract's names on the zoo config
        cfg = reference_cfg()
        cfg.MODEL.META_ARCHITECTURE = "PanopticFPNExt"
        cfg.MODEL.SEM_SEG_HEAD.NAME = "SemanticFPNHead"
        cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0  # lambda_s (0.5) comes from LOSS_WEIGHTS
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    # detectron2's PanopticFPN ids, as the reference outputs (not the test dataset's)
    cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.CATEGORY_IDS = "detectron2"
    if tiny:
        cfg.merge_from_list(TINY_MODEL)
    for key, value in postprocess.items():
        cfg.MODEL.PANOPTIC_EXT.POSTPROCESS[key] = value
    return cfg


def synthetic_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A (3, H, W) uint8 image of overlapping flat rectangles plus mild noise (seeded)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.zeros(3, height, width)
    for _ in range(30):
        y0, x0 = (int(torch.randint(0, n, (1,), generator=g)) for n in (height, width))
        h = int(torch.randint(max(1, height // 20), max(2, height // 2), (1,), generator=g))
        w = int(torch.randint(max(1, width // 20), max(2, width // 2), (1,), generator=g))
        image[:, y0 : y0 + h, x0 : x0 + w] = torch.randint(0, 256, (3, 1, 1), generator=g).float()
    image += torch.randn(3, height, width, generator=g) * 8
    return image.clamp(0, 255).to(torch.uint8)


def inference_inputs(sizes: Sequence[Sequence[int]], seed: int = 0) -> List[Dict[str, Any]]:
    """detectron2 inference inputs for images of the given (H, W) sizes."""
    return [
        {"image": synthetic_image(h, w, seed + i), "height": h, "width": w}
        for i, (h, w) in enumerate(sizes)
    ]


@torch.no_grad()
def calibrate_random_weights_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """
    Make a randomly initialised R-CNN behave like a trained one, in place.

    Without pretrained weights, activations grow ~1000x through ResNet's FrozenBatchNorm layers
    (identity statistics), every proposal collapses and there are no detections. Here each frozen
    BN layer takes the mean and variance of its input on one synthetic image (in forward order,
    so later layers see normalised inputs); then the box classifier and the mask predictor are
    scaled so their logits on that image have standard deviations _CLS_LOGIT_STD and
    _MASK_LOGIT_STD: confident scores and masks.
    """
    from detectron2.layers import FrozenBatchNorm2d

    def set_stats(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    was_training = model.training
    model.eval()
    handles = [
        m.register_forward_pre_hook(set_stats)
        for m in model.modules()
        if isinstance(m, FrozenBatchNorm2d)
    ]
    images = model.preprocess_image([{"image": synthetic_image(256, 384, seed + 1000)}])
    try:
        features = model.backbone(images.tensor)
    finally:
        for h in handles:
            h.remove()
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None:
        proposals, _ = model.proposal_generator(images, features, None)
        boxes = [p.proposal_boxes for p in proposals]
        pooled = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], boxes)
        logits = roi_heads.box_predictor.cls_score(roi_heads.box_head(pooled))
        roi_heads.box_predictor.cls_score.weight.mul_(_CLS_LOGIT_STD / float(logits.std()))
        if getattr(roi_heads, "mask_on", False):
            pooled = roi_heads.mask_pooler(
                [features[f] for f in roi_heads.mask_in_features], [b[:64] for b in boxes]
            )
            logits = roi_heads.mask_head.layers(pooled)
            roi_heads.mask_head.predictor.weight.mul_(_MASK_LOGIT_STD / float(logits.std()))
    model.train(was_training)
    return model


@functools.lru_cache(maxsize=2)
def calibrated_state_dict(seed: int = 0, tiny: bool = False) -> Dict[str, torch.Tensor]:
    """
    Seeded random weights of detectron2's R50 PanopticFPN (or the tiny one), calibrated; cached
    for the benchmarks of one run (treat it as read-only).
    """
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    model = build_model(reference_cfg(tiny=tiny))
    calibrate_random_weights_(model, seed)
    return model.state_dict()


def build_with_weights(cfg, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
    """build_model(cfg) in eval mode with ``state_dict`` loaded (strict: same keys and shapes)."""
    from detectron2.modeling import build_model

    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(state_dict, strict=strict)
    if strict and (missing or unexpected):  # load_state_dict raises already; be explicit anyway
        raise RuntimeError(f"weights do not match: missing {missing}, unexpected {unexpected}")
    return model.eval()


def panoptic_outputs_equal(ours: Sequence[Mapping], reference: Sequence[Mapping]) -> Optional[str]:
    """
    Compare the "panoptic_seg" of two lists of model outputs: id maps equal and segments_info
    equal (scores within 1e-6). Returns None when equal, else a message saying what differs.
    """
    if len(ours) != len(reference):
        return f"{len(ours)} outputs vs {len(reference)}"
    for i, (a, b) in enumerate(zip(ours, reference)):
        seg_a, info_a = a["panoptic_seg"]
        seg_b, info_b = b["panoptic_seg"]
        if seg_a.shape != seg_b.shape:
            return f"image {i}: panoptic map shape {tuple(seg_a.shape)} vs {tuple(seg_b.shape)}"
        diff = int((seg_a.to(torch.int64) != seg_b.to(torch.int64)).sum())
        if diff:
            return f"image {i}: {diff} panoptic ids differ"
        if len(info_a) != len(info_b):
            return f"image {i}: {len(info_a)} segments vs {len(info_b)}"
        for sa, sb in zip(info_a, info_b):
            if set(sa) != set(sb):
                return f"image {i}: segment keys {sorted(sa)} vs {sorted(sb)}"
            for key in sa:
                va, vb = sa[key], sb[key]
                if isinstance(va, float) or isinstance(vb, float):
                    if abs(float(va) - float(vb)) > 1e-6:
                        return f"image {i}: segment {sa.get('id')} {key} {va} vs {vb}"
                elif int(va) != int(vb):
                    return f"image {i}: segment {sa.get('id')} {key} {va} vs {vb}"
    return None


# ---------------------------------------------------------------------------------------------
# The machine's own limit, and a path's throughput as a share of it.
# ---------------------------------------------------------------------------------------------


def _best_gflops(fn: Callable[[], Any], flop: float, repeats: int) -> float:
    fn()  # warm-up: oneDNN primitive creation, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flop / best / 1e9


@torch.no_grad()
def _probes(dtype, channels: int, size, n: int, repeats: int):
    """GFLOP/s of the 3x3 convolution and of the matrix multiply in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, *size, generator=g).to(dtype)
    weight = (torch.randn(channels, channels, 3, 3, generator=g) * 0.01).to(dtype)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    conv_flop = 2.0 * channels * channels * 9 * size[0] * size[1]
    conv = _best_gflops(
        lambda: torch.nn.functional.conv2d(x, weight, padding=1), conv_flop, repeats
    )
    return conv, _best_gflops(lambda: a @ b, 2.0 * n**3, repeats)


def measure_machine_limit(quick: bool = False, repeats: int = 0) -> Dict[str, Any]:
    """
    The best arithmetic throughput reached on this machine now, on torch's thread count, through
    the libraries the inference paths use: a large 3x3 convolution (oneDNN; 256 -> 256 channels
    on a 200x304 map, FPN-like) and a large matrix multiply (``torch.matmul``, 4096^3), in FP32,
    and in bf16 where the CPU has bf16 dot products. Best of ``repeats`` runs (load from other
    processes only slows a run down). :data:`machine_limit` is the same, cached per process.

    Returns:
        dict: "fp32_gflops" (the limit: the best FP32 probe), "bf16_gflops" (None without
        support), each probe's GFLOP/s ("conv3x3_fp32", "matmul_fp32", ...), "threads",
        "bf16_supported", "load_average".
    """
    repeats = repeats or (2 if quick else 5)
    channels, (h, w), n = (64, (50, 76), 1024) if quick else (256, (200, 304), 4096)
    dtypes = [("fp32", torch.float32)]
    if cpu_supports_bf16():
        dtypes.append(("bf16", torch.bfloat16))
    result: Dict[str, Any] = {"threads": torch.get_num_threads()}
    for name, dtype in dtypes:
        conv, matmul = _probes(dtype, channels, (h, w), n, repeats)
        result[f"conv3x3_{name}"], result[f"matmul_{name}"] = conv, matmul
        result[f"{name}_gflops"] = max(conv, matmul)
    result.setdefault("bf16_gflops", None)
    result["bf16_supported"] = cpu_supports_bf16()
    result["load_average"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return result


def throughput(
    multiply_adds: float, seconds: float, limit_gflops: Optional[float] = None
) -> Dict[str, Optional[float]]:
    """
    A path's achieved arithmetic rate: ``multiply_adds`` (fvcore's count of what it executed:
    one multiply-add = one fvcore "flop") x 2 over ``seconds``, and its share of the machine's
    limit (e.g. ``machine_limit()["fp32_gflops"]``).

    Returns:
        dict: "gflops_per_s", "share_of_limit" (None without a limit).
    """
    rate = 2.0 * float(multiply_adds) / float(seconds) / 1e9
    share = rate / float(limit_gflops) if limit_gflops else None
    return {"gflops_per_s": rate, "share_of_limit": share}


# Measured once per process: every benchmark of one ``run_all`` compares with the same limit
# (a benchmark may measure again beside its own timing, ``measure_machine_limit``, and take the
# higher: load from other processes only lowers a measurement).
machine_limit = functools.lru_cache(maxsize=2)(measure_machine_limit)
