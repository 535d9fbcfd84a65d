"""
The benchmark suite (``make bench``): the shared row, timing, memory and throughput helpers; a fast
smoke run (the machine's limit and the post-processing benchmark at tiny size through
``benchmarks/run_all.py --quick``); and, with ``--runslow``, every benchmark at tiny size.
"""

import importlib.util
import json
import mmap
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO, "benchmarks")
# Benchmarks that must always be there (the others are reported as missing if absent).
OWN = ("limit", "inference", "train_step", "flops", "scaling", "export")
ROW_KEYS = {"benchmark", "workload", "repeats", "reference", "ours_s", "reference_s", "ratio"}
ROW_KEYS |= {"target", "met", "unit"}


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", os.path.join(BENCH_DIR, f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, BENCH_DIR)  # the benchmark modules import `common` as a top-level module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(BENCH_DIR)
    return module


def test_make_row_ratio_and_target():
    common = _load("common")
    row = common.make_row("x", "w", 3, "ref", ours_s=1.0, reference_s=4.0, target=0.5)
    assert row["ratio"] == pytest.approx(0.25)
    assert row["met"] is True
    row = common.make_row("x", "w", 3, "ref", ours_s=3.0, reference_s=4.0, target=0.5)
    assert row["met"] is False
    # A speed-up with different outputs never meets its target.
    row = common.make_row(
        "x", "w", 3, "ref", ours_s=1.0, reference_s=4.0, target=0.5, identical=False
    )
    assert row["met"] is False
    assert common.make_row("x", "w", 1, "ref", ours_s=1.0, reference_s=2.0)["met"] is None


def test_time_interleaved_alternates():
    common = _load("common")
    calls = []
    times = common.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(times["a"]), len(times["b"])] == [3, 3]


def test_peak_rss_reset():
    common = _load("common")
    common.reset_peak_rss()
    low = common.peak_rss_mb()
    # 64 MB of fresh pages, touched: a bytearray could reuse heap memory that earlier tests
    # freed (still resident), and then the peak would not move
    block = mmap.mmap(-1, 64 * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    assert common.peak_rss_mb() > low + 50
    block.close()


def test_throughput_is_twice_the_multiply_adds_over_the_time():
    common = _load("common")
    rate = common.throughput(50e9, 2.0, limit_gflops=200.0)
    assert rate["gflops_per_s"] == pytest.approx(50.0)
    assert rate["share_of_limit"] == pytest.approx(0.25)
    assert common.throughput(50e9, 2.0)["share_of_limit"] is None


def test_postprocess_worst_case_rows_keep_the_highest_ratio_per_mode():
    bench = _load("bench_postprocess")
    rows = [
        {"workload": "a", "outputs": "panoptic", "ratio": 0.1, "identical": True},
        {"workload": "b", "outputs": "panoptic", "ratio": 0.3, "identical": True},
        {"workload": "c", "outputs": "all", "ratio": 0.4, "identical": True},
    ]
    worst = bench.worst_case_rows(rows)
    assert [(r["workload"].split("= ")[1], r["target"], r["met"]) for r in worst] == [
        ("b", 0.25, False),
        ("c", 0.5, True),
    ]


def _run_all_quick(tmp_path, only=None):
    out, png = str(tmp_path / "results.json"), str(tmp_path / "scaling.png")
    cmd = [sys.executable, os.path.join(BENCH_DIR, "run_all.py"), "--quick"]
    cmd += ["--output", out, "--plot", png] + (["--only", ",".join(only)] if only else [])
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert os.path.isfile(out), proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        result = json.load(f)
    assert os.path.isfile(os.path.splitext(out)[0] + ".md")
    errors = [e for e in result["errors"] if not e["error"].startswith("missing")]
    assert errors == [], proc.stdout[-3000:]
    rows = result["rows"]
    for row in rows:
        assert ROW_KEYS <= set(row), row
        assert row["repeats"] >= 1, row
        assert row["ratio"] > 0, row
        assert row["workload"], row
    suites = {r["suite"] for r in rows}
    return result, {s: [r for r in rows if r["suite"] == s] for s in suites}, png


def test_smoke_limit_and_postprocess(tmp_path):
    """The fast smoke run of ``make bench``: the machine's limit and post-processing."""
    result, by_suite, _ = _run_all_quick(tmp_path, only=["limit", "postprocess"])
    assert set(by_suite) == {"limit", "postprocess"}
    limit = by_suite["limit"]
    assert {r["unit"] for r in limit} == {"GFLOP/s"}
    assert all(r["ours_value"] > 0 for r in limit)
    assert max(r["ratio"] for r in limit) == pytest.approx(1.0)  # the best probe is the limit
    post = by_suite["postprocess"]
    assert all(r["identical"] for r in post), post
    worst = [r for r in post if r["workload"].startswith("worst case")]
    assert [r["target"] for r in worst] == [0.25, 0.5]
    workloads = {r["workload"].split(":")[0] for r in post if r not in worst and "outputs" in r}
    assert workloads == {"random", "proposals-wide", "proposals-large", "crowded"}


def test_partial_run_keeps_the_other_suites_rows(tmp_path):
    """``run_all.py --only`` replaces the rows of the suites it runs and keeps the others."""
    out = tmp_path / "results.json"
    bench = _load("common")
    kept = dict(bench.make_row("pq", "earlier", 1, "x", ours_s=1.0, reference_s=2.0), suite="pq")
    stale = dict(bench.make_row("limit", "stale", 1, "x", ours_s=1.0, reference_s=1.0))
    stale["suite"] = "limit"
    out.write_text(json.dumps({"meta": {"date": "earlier"}, "rows": [kept, stale], "errors": []}))
    cmd = [sys.executable, os.path.join(BENCH_DIR, "run_all.py"), "--quick", "--only", "limit"]
    subprocess.run(cmd + ["--output", str(out)], cwd=REPO, check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert kept in result["rows"] and stale not in result["rows"]
    assert {r["suite"] for r in result["rows"]} == {"limit", "pq"}
    assert result["meta"]["kept_from"] == {"date": "earlier"}
    assert "earlier" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_every_benchmark_runs_quick(tmp_path):
    result, by_suite, png = _run_all_quick(tmp_path)
    assert os.path.getsize(png) > 1000
    missing = {e["benchmark"] for e in result["errors"]}
    assert not missing & set(OWN)
    assert set(by_suite) | missing == set(result["meta"]["benchmarks"])
    assert len(by_suite["inference"]) == 2
    for row in by_suite["inference"]:
        assert row["identical"], row
        assert row["ours_peak_rss_mb"] > 0 and row["reference_peak_rss_mb"] > 0
        assert row["ours_s"] > 0
        # achieved GFLOP/s and share of the measured limit, beside the ratio
        assert 0 < row["ours_share_of_limit"] and 0 < row["reference_share_of_limit"]
        assert row["executed_gmacs"] <= row["reference_executed_gmacs"]
    assert by_suite["train_step"][0]["losses_match"], by_suite["train_step"]
    assert by_suite["train_step"][0]["grads_match"], by_suite["train_step"]
    flops = by_suite["flops"]
    assert {r["unit"] for r in flops} == {"GFLOPs", "M params"}
    joint = [r for r in flops if "joint vs separate" in r["workload"]]
    assert all(0.3 < r["ratio"] < 1.0 for r in joint), joint
    same_arch = [r for r in flops if "same architecture" in r["workload"]]
    assert same_arch[0]["ratio"] == pytest.approx(1.0, abs=0.05)
    scaling = by_suite["scaling"]
    assert {r["stage"] for r in scaling} == {"inference", "postprocess"}
    assert all(r["identical"] for r in scaling), scaling
    export = by_suite["export"]  # ONNX Runtime: all outputs, panoptic output
    assert len(export) == 2
    for row in export:
        assert row["pixel_agreement"] >= 0.999, row
        assert row["ours_peak_rss_mb"] > 0
        assert row["reference_peak_rss_mb"] > 0


def test_precision_paths_side_by_side(tmp_path, tiny_synthetic):
    """``bench_precision.py`` on a saved (untrained) model: a row per path with the evaluator's
    PQ / PQ_th / PQ_st and the latency of eager FP32, the ONNX FP32 and int8 exports; bf16 is
    refused where the CPU lacks bf16 dot products and measured where it has them; no weights
    file is a clear error. (The PQ of a trained model: benchmarks/results-log.md.)"""
    import torch
    from detectron2.modeling import build_model

    from panoptic_ext.apps.train import get_panoptic_cfg
    from panoptic_ext.modeling.cpu_inference import cpu_supports_bf16

    bench = _load("bench_precision")
    opts = ["DATASETS.TRAIN", f"('{tiny_synthetic['train']}',)"]
    opts += ["DATASETS.TEST", f"('{tiny_synthetic['val']}',)", "INPUT.MIN_SIZE_TEST", "64"]
    weights = str(tmp_path / "model.pth")
    torch.manual_seed(0)
    torch.save(
        {"model": build_model(get_panoptic_cfg(bench.DEFAULT_CONFIG, opts)).state_dict()}, weights
    )
    rows = bench.run(weights=weights, images=2, calibration_images=2, repeats=1, opts=opts)
    by_path = {r["workload"].split(",")[0]: r for r in rows}
    assert list(by_path) == [
        "eager FP32",
        "eager bf16 (TEST.CPU_BF16)",
        "ONNX Runtime FP32",
        "ONNX Runtime int8 (--precision int8)",
    ]
    measured = [r for r in rows if "refused" not in r]
    for row in measured:
        assert {"PQ", "PQ_th", "PQ_st"} <= set(row) and row["ratio"] > 0, row
    bf16 = by_path["eager bf16 (TEST.CPU_BF16)"]
    assert ("refused" in bf16) == (not cpu_supports_bf16()), bf16

    with pytest.raises(FileNotFoundError, match="make train"):
        bench.run(weights=str(tmp_path / "missing.pth"), opts=opts)
