"""
Smoke test of the benchmark suite (``make bench``): every benchmark runs at tiny size with one
repeat through ``benchmarks/run_all.py --quick`` and produces well-formed rows; plus unit tests of
the shared row and timing helpers.
"""

import importlib.util
import json
import mmap
import os
import subprocess
import sys
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO, "benchmarks")
# Benchmarks that must always be there (the others are reported as missing if absent).
OWN = ("inference", "train_step", "flops", "scaling", "export")
ROW_KEYS = {"benchmark", "workload", "repeats", "reference", "ours_s", "reference_s", "ratio"}
ROW_KEYS |= {"target", "met", "unit"}


def _load_common():
    spec = importlib.util.spec_from_file_location(
        "bench_common", os.path.join(BENCH_DIR, "common.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestHelpers(unittest.TestCase):
    def test_make_row_ratio_and_target(self):
        common = _load_common()
        row = common.make_row("x", "w", 3, "ref", ours_s=1.0, reference_s=4.0, target=0.5)
        self.assertAlmostEqual(row["ratio"], 0.25)
        self.assertIs(row["met"], True)
        row = common.make_row("x", "w", 3, "ref", ours_s=3.0, reference_s=4.0, target=0.5)
        self.assertIs(row["met"], False)
        # A speed-up with different outputs never meets its target.
        row = common.make_row(
            "x", "w", 3, "ref", ours_s=1.0, reference_s=4.0, target=0.5, identical=False
        )
        self.assertIs(row["met"], False)
        self.assertIsNone(common.make_row("x", "w", 1, "ref", ours_s=1.0, reference_s=2.0)["met"])

    def test_time_interleaved_alternates(self):
        common = _load_common()
        calls = []
        times = common.time_interleaved(
            {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
        )
        self.assertEqual(calls, ["a", "b", "b", "a", "a", "b", "b", "a"])
        self.assertEqual([len(times["a"]), len(times["b"])], [3, 3])

    def test_peak_rss_reset(self):
        common = _load_common()
        common.reset_peak_rss()
        low = common.peak_rss_mb()
        # 64 MB of fresh pages, touched: a bytearray could reuse heap memory that earlier tests
        # freed (still resident), and then the peak would not move
        block = mmap.mmap(-1, 64 * 1024 * 1024)
        for offset in range(0, len(block), 4096):
            block[offset] = 1
        self.assertGreater(common.peak_rss_mb(), low + 50)
        block.close()


class TestQuickSuite(unittest.TestCase):
    def test_run_all_quick(self):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            out, png = os.path.join(tmp, "results.json"), os.path.join(tmp, "scaling.png")
            proc = subprocess.run(
                [sys.executable, os.path.join(BENCH_DIR, "run_all.py"), "--quick"]
                + ["--output", out, "--plot", png],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=600,
            )
            self.assertTrue(os.path.isfile(out), proc.stdout[-3000:] + proc.stderr[-3000:])
            with open(out) as f:
                result = json.load(f)
            self.assertTrue(os.path.isfile(os.path.splitext(out)[0] + ".md"))
            self.assertGreater(os.path.getsize(png), 1000)

        errors = [e for e in result["errors"] if not e["error"].startswith("missing")]
        self.assertEqual(errors, [], proc.stdout[-3000:])
        missing = {e["benchmark"] for e in result["errors"]}
        self.assertFalse(missing & set(OWN))
        rows = result["rows"]
        suites = {r["suite"] for r in rows}
        self.assertEqual(suites | missing, set(result["meta"]["benchmarks"]))
        for row in rows:
            self.assertLessEqual(ROW_KEYS, set(row), row)
            self.assertGreaterEqual(row["repeats"], 1, row)
            self.assertGreater(row["ratio"], 0, row)
            self.assertTrue(row["workload"], row)

        by_suite = {s: [r for r in rows if r["suite"] == s] for s in suites}
        self.assertEqual(len(by_suite["inference"]), 2)
        for row in by_suite["inference"]:
            self.assertTrue(row["identical"], row)
            self.assertGreater(row["ours_peak_rss_mb"], 0)
            self.assertGreater(row["reference_peak_rss_mb"], 0)
            self.assertGreater(row["ours_s"], 0)
        self.assertTrue(by_suite["train_step"][0]["losses_match"], by_suite["train_step"])
        self.assertTrue(by_suite["train_step"][0]["grads_match"], by_suite["train_step"])
        flops = by_suite["flops"]
        self.assertEqual({r["unit"] for r in flops}, {"GFLOPs", "M params"})
        joint = [r for r in flops if "joint vs separate" in r["workload"]]
        self.assertTrue(all(0.3 < r["ratio"] < 1.0 for r in joint), joint)
        same_arch = [r for r in flops if "same architecture" in r["workload"]]
        self.assertAlmostEqual(same_arch[0]["ratio"], 1.0, delta=0.05)
        scaling = by_suite["scaling"]
        self.assertEqual({r["stage"] for r in scaling}, {"inference", "postprocess"})
        self.assertTrue(all(r["identical"] for r in scaling), scaling)
        export = by_suite["export"]  # ONNX Runtime: all outputs, panoptic output
        self.assertEqual(len(export), 2)
        for row in export:
            self.assertGreaterEqual(row["pixel_agreement"], 0.999, row)
            self.assertGreater(row["ours_peak_rss_mb"], 0)
            self.assertGreater(row["reference_peak_rss_mb"], 0)


if __name__ == "__main__":
    unittest.main()
