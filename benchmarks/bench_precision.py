"""
The opt-in reduced-precision CPU paths beside FP32, on a trained model: PQ / PQ_th / PQ_st on
the validation set (the evaluators of ``train_net.py --eval-only``) and the latency per image,
timed side by side (interleaved over the same images, medians).

Paths: the eager FP32 model (the CPU setup of the predictor), its ONNX export on ONNX Runtime
(FP32), the int8 export (``tools/export_model.py --precision int8``: convolutions quantized,
calibrated on training images), and the eager bf16 path (``TEST.CPU_BF16``) where the CPU has
bf16 dot products; where it has not, that row says so instead of a figure. Needs a trained
model (``make train`` writes the default one):

    python benchmarks/bench_precision.py [--weights output/main_job/model_final.pth] \
        [--config-file CFG] [--images 20] [--calibration-images 8]
"""

import argparse
import copy
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import torch
from common import REPO_ROOT, make_row, median, time_interleaved
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from panoptic_ext.apps.train import Trainer, get_panoptic_cfg
from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer
from panoptic_ext.modeling import bf16_autocast, optimize_for_cpu_inference
from panoptic_ext.modeling.cpu_inference import cpu_supports_bf16

DEFAULT_CONFIG = os.path.join(
    REPO_ROOT, "configs/Synthetic-PanopticSegmentation/panoptic_fpn_R_18_scratch_cpu.yaml"
)
DEFAULT_WEIGHTS = os.path.join(REPO_ROOT, "output/main_job/model_final.pth")
THREADS = 2
REFERENCE = "eager FP32 (optimize_for_cpu_inference)"


class Bf16Model(torch.nn.Module):
    """A model that predicts under bf16 autocast (the ``TEST.CPU_BF16`` path)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        with bf16_autocast():
            return self.model(inputs)


def eager_model(cfg) -> torch.nn.Module:
    model = build_model(cfg)
    # strict, as the predictor loads: a mismatched file is an error, not a half-random model
    PanopticCheckpointer(model, allow_partial=cfg.RUN.ALLOW_PARTIAL_WEIGHTS).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def export(
    config_file: str, opts: Sequence[str], weights: str, folder: str, calibration: Sequence[str]
) -> Dict[str, str]:
    """The FP32 ONNX export of ``weights`` and its int8 copy (what ``tools/export_model.py
    --precision int8`` writes, without exporting FP32 a second time); returns path name ->
    export folder."""
    from panoptic_ext.apps.export.commands import export_main
    from panoptic_ext.apps.export.quantize import calibration_inputs, quantize_export

    folders = {"onnx_fp32": os.path.join(folder, "fp32"), "onnx_int8": os.path.join(folder, "int8")}
    meta = export_main(
        ["--config-file", config_file, "--weights", weights, "--output", folders["onnx_fp32"]]
        + list(opts)
    )
    images = calibration_inputs(meta, calibration)
    quantize_export(folders["onnx_fp32"], folders["onnx_int8"], images, "int8")
    return folders


def run(
    config_file: str = DEFAULT_CONFIG,
    weights: str = DEFAULT_WEIGHTS,
    images: int = 20,
    calibration_images: int = 8,
    repeats: int = 3,
    opts: Sequence[str] = (),
) -> List[Dict[str, Any]]:
    """
    One row per path (see the module docstring); ``opts`` are config overrides (KEY VALUE).
    ``images`` validation images are timed, ``calibration_images`` training images calibrate
    the int8 export.
    """
    from panoptic_ext.apps.export import ExportedPanopticModel

    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{weights}: no trained model; run `make train` first or pass --weights FILE"
        )
    torch.set_num_threads(THREADS)
    cfg = get_panoptic_cfg(config_file, [*opts, "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"])
    train_files = [r["file_name"] for r in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])]
    models: Dict[str, torch.nn.Module] = {"eager_fp32": eager_model(cfg)}
    bf16 = cpu_supports_bf16()
    if bf16:
        models["eager_bf16"] = Bf16Model(eager_model(cfg))
    results: Dict[str, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        exports = export(config_file, opts, weights, tmp, train_files[:calibration_images])
        for name, folder in exports.items():
            models[name] = ExportedPanopticModel(folder, ["CPUExecutionProvider"], THREADS)
        for name, model in models.items():
            eval_cfg = cfg.clone()
            eval_cfg.OUTPUT_DIR = os.path.join(tmp, "eval", name)
            # eager models: a copy, since evaluation applies the CPU speed-ups in place
            evaluated = model if name.startswith("onnx") else copy.deepcopy(model)
            eval_cfg.DATASETS.TEST = cfg.DATASETS.TEST[:1]
            results[name] = Trainer.test(eval_cfg, evaluated)  # one dataset: its results
        loader = Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])
        batches = [batch for batch, _ in zip(loader, range(images))]
        optimize_for_cpu_inference(models["eager_fp32"])
        if bf16:
            optimize_for_cpu_inference(models["eager_bf16"].model)

        def call(model):
            def run_all():
                with torch.no_grad():
                    for batch in batches:
                        model(batch)

            return run_all

        times = time_interleaved({n: call(m) for n, m in models.items()}, repeats, warmup=1)
    rows = []
    labels = {
        "eager_fp32": "eager FP32",
        "eager_bf16": "eager bf16 (TEST.CPU_BF16)",
        "onnx_fp32": "ONNX Runtime FP32",
        "onnx_int8": "ONNX Runtime int8 (--precision int8)",
    }
    for name in ("eager_fp32", "eager_bf16", "onnx_fp32", "onnx_int8"):
        workload = (
            f"{labels[name]}, {cfg.DATASETS.TEST[0]} ({len(batches)} images timed, "
            f"{THREADS} threads)"
        )
        if name not in models:
            rows.append(
                make_row(
                    "precision",
                    workload,
                    0,
                    REFERENCE,
                    refused="this CPU has no bf16 dot products (avx512_bf16 / amx_bf16)",
                )
            )
            continue
        pq = results[name]["panoptic_seg"]
        rows.append(
            make_row(
                "precision",
                workload,
                repeats,
                REFERENCE,
                ours_s=median(times[name]) / len(batches),
                reference_s=median(times["eager_fp32"]) / len(batches),
                PQ=round(pq["PQ"], 3),
                PQ_th=round(pq["PQ_th"], 3),
                PQ_st=round(pq["PQ_st"], 3),
            )
        )
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=20, help="validation images timed")
    parser.add_argument("--calibration-images", type=int, default=8, help="training images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE")
    args = parser.parse_args(argv)
    from run_all import print_table

    rows = run(args.config_file, args.weights, args.images, args.calibration_images, args.repeats)
    print_table(rows)
    for row in rows:
        print(row)


if __name__ == "__main__":
    sys.exit(main())
