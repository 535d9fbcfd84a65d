#!/usr/bin/env bash
# GPU check: on a machine with a CUDA GPU and a python3 that has torch, but no network, install
# detectron2 (main, built from source against that torch) and panoptic_ext from the files that
# `make gpu-bundle` gathered in gpu_bundle/, then run
#   1. the CUDA tests (pytest -m cuda tests),
#   2. a short AMP training run of the quick config (train_net.py, SOLVER.AMP.ENABLED True) on
#      the synthetic dataset, generated on the fly,
#   3. a timed inference of the R50 model against detectron2's PanopticFPN (same weights).
# Each step prints a PASS or FAIL line; the summary at the end repeats them, and the exit status
# is 1 if any step failed. The box's torch is never installed over: the venv sees it.
#
# Usage: bash tools/gpu_check.sh    (with the device tool: run(command=..., carry=["gpu_bundle"]))
# Environment:
#   PYTHON=python3             the interpreter with torch
#   GPU_CHECK_DEVICE=cuda      "cpu" rehearses every step on a machine without a GPU (no AMP;
#                              the CUDA tests must then all skip)
#   GPU_CHECK_BUDGET=540       seconds for everything; each step gets at most what is left
#   GPU_CHECK_BUILD_OPS=1      0: skip compiling detectron2's ops (use its sources as they are)
#   GPU_CHECK_TRAIN_ITERS=20, GPU_CHECK_INFER_SIZE=800x1216, GPU_CHECK_INFER_ARGS (more options
#   of benchmarks/gpu_inference.py), GPU_CHECK_WORK=/tmp/panoptic_ext_gpu
#   OUT                        if set (the device tool sets it), the log is also written there,
#                              with the logs of the detectron2 build and of the training run
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="${GPU_BUNDLE:-$ROOT/gpu_bundle}"
REQS="$ROOT/tools/gpu_bundle_requirements.txt"
PYTHON="${PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
BUDGET="${GPU_CHECK_BUDGET:-540}"
BUILD_OPS="${GPU_CHECK_BUILD_OPS:-1}"
TRAIN_ITERS="${GPU_CHECK_TRAIN_ITERS:-20}"
INFER_SIZE="${GPU_CHECK_INFER_SIZE:-800x1216}"
INFER_ARGS="${GPU_CHECK_INFER_ARGS:-}"
WORK="${GPU_CHECK_WORK:-/tmp/panoptic_ext_gpu}"
VENV="$WORK/venv"
VPY="$VENV/bin/python"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    exec > >(tee -a "$OUT/gpu_check.log") 2>&1
fi

RESULTS=()
FAILED=0
START=$SECONDS

# step NAME LIMIT_S FUNCTION: run FUNCTION (defined below and exported) in a child bash with a
# timeout (LIMIT_S, or what is left of BUDGET), print and record PASS or FAIL.
step() {
    local name="$1" limit="$2" left rc line start
    shift 2
    left=$((BUDGET - (SECONDS - START)))
    [ "$left" -lt "$limit" ] && limit=$left
    echo
    echo "=== $name (time limit ${limit}s)"
    start=$SECONDS
    if [ "$limit" -lt 5 ]; then
        rc=124
        echo "no time left in GPU_CHECK_BUDGET=${BUDGET}s"
    else
        timeout --kill-after=10 "$limit" bash -c "$1"
        rc=$?
    fi
    if [ "$rc" -eq 0 ]; then
        line="PASS  $name ($((SECONDS - start))s)"
    else
        line="FAIL  $name (exit $rc, $((SECONDS - start))s)"
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && line="FAIL  $name (timed out after ${limit}s)"
        FAILED=1
    fi
    echo "$line"
    RESULTS+=("$line")
    return "$rc"
}

summary() {
    [ -n "${OUT:-}" ] && [ -d "$OUT" ] && cp "$WORK"/*.log "$OUT"/ 2>/dev/null
    echo
    echo "=== GPU check summary ($((SECONDS - START))s)"
    echo "${ENV_LINE:-environment unknown}"
    printf '%s\n' "${RESULTS[@]}"
    if [ "$FAILED" -eq 0 ]; then echo "GPU CHECK: PASS"; else echo "GPU CHECK: FAIL"; fi
    exit "$FAILED"
}

environment() {
    "$PYTHON" -V || return 1
    "$PYTHON" - "$DEVICE" <<'EOF'
import os, sys
import torch
device = sys.argv[1]
print(f"python {sys.version.split()[0]} at {sys.executable}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"GPU: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}")
print(f"CPUs: {os.cpu_count()}")
sys.exit(0 if device == "cpu" or torch.cuda.is_available() else 1)
EOF
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    [ -f "$BUNDLE/detectron2-src.tar.gz" ] || {
        echo "no bundle at $BUNDLE: run 'make gpu-bundle' and carry gpu_bundle" >&2
        return 1
    }
}

env_line() {
    "$PYTHON" -c 'import sys, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, {gpu}")'
}

make_venv() {
    rm -rf "$WORK" && mkdir -p "$WORK" || return 1
    "$PYTHON" -m venv --system-site-packages --without-pip "$VENV" || return 1
    # --system-site-packages shows the base interpreter's packages; when python3 is itself a venv
    # (torch installed in it), a .pth file adds that venv's site-packages (and runs its .pth
    # files) after the new venv's own.
    local site
    site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    "$PYTHON" -c 'import site, sys
if sys.prefix != sys.base_prefix:
    print("\n".join(f"import site; site.addsitedir({p!r})" for p in site.getsitepackages()))' \
        >"$site/_gpu_check_parent_env.pth" || return 1
    "$VPY" -c 'import pip, torch; print("venv python sees torch", torch.__version__, "at", torch.__file__)'
}

# Requirement lines of REQS (comments removed); $1 = "always" or "if-missing".
requirements() {
    local line req mod
    while IFS= read -r line; do
        req="${line%%#*}"
        req="${req//[[:space:]]/}"
        [ -z "$req" ] && continue
        mod=$(sed -n 's/.*# if-missing: *\([A-Za-z0-9_.]*\).*/\1/p' <<<"$line")
        if [ "$1" = always ] && [ -z "$mod" ]; then
            echo "$req"
        elif [ "$1" = if-missing ] && [ -n "$mod" ] && ! "$VPY" -c "import $mod" 2>/dev/null; then
            echo "$req"
        fi
    done <"$REQS"
}

pip_bundle() {
    "$VPY" -m pip install -q --no-index --no-deps --no-compile --ignore-installed \
        --find-links "$BUNDLE/wheels" "$@"
}

install_dependencies() {
    local always missing
    always=$(requirements always)
    missing=$(requirements if-missing)
    echo "installing: $(echo $always)"
    pip_bundle $always || return 1
    if [ -n "$missing" ]; then
        echo "not found on this machine, installing: $(echo $missing)"
        pip_bundle $missing || return 1
    fi
}

unpack_detectron2() {
    mkdir -p "$WORK/src" && tar -xzf "$BUNDLE/detectron2-src.tar.gz" -C "$WORK/src" || return 1
    D2_SRC=$(dirname "$(find "$WORK/src" -maxdepth 3 -name setup.py -path '*detectron2*' | head -n 1)")
    echo "detectron2 source: $(cat "$BUNDLE/DETECTRON2_SOURCE" 2>/dev/null) in $D2_SRC"
}

build_detectron2() {
    local arch
    arch=$("$VPY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' \
        2>/dev/null || echo "")
    echo "building detectron2 with ${arch:+CUDA ops for sm ${arch}, }MAX_JOBS=$(nproc)"
    (cd "$D2_SRC" && TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
        FORCE_CUDA=$([ "$DEVICE" = cuda ] && echo 1 || echo 0) \
        "$VPY" -m pip install -v --no-index --no-deps --no-build-isolation --ignore-installed .) \
        >"$WORK/detectron2_build.log" 2>&1
    local rc=$?
    tail -n 15 "$WORK/detectron2_build.log"
    return $rc
}

# Fallback: detectron2's Python sources as they are (no compiled ops; panoptic_ext needs none).
use_detectron2_sources() {
    local site
    site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    "$VPY" -m pip uninstall -q -y detectron2 >/dev/null 2>&1
    ln -sfn "$D2_SRC/configs" "$D2_SRC/detectron2/model_zoo/configs" || return 1
    echo "$D2_SRC" >"$site/_gpu_check_detectron2_src.pth"
}

install_project() {
    "$VPY" -m pip install -q --no-index --no-deps --no-build-isolation -e "$ROOT" || return 1
    (cd "$WORK" && "$VPY" - "$ROOT" <<'EOF')
import os, sys
import detectron2, panoptic_ext
from panoptic_ext.compat import detectron2_has_compiled_ops
print(f"detectron2 {detectron2.__version__} at {os.path.dirname(detectron2.__file__)}, "
      f"compiled ops: {detectron2_has_compiled_ops()}")
print(f"panoptic_ext at {os.path.dirname(panoptic_ext.__file__)}")
sys.exit(0 if panoptic_ext.__file__.startswith(os.path.realpath(sys.argv[1])) else 1)
EOF
}

cuda_tests() {
    local xml="$WORK/cuda_tests.xml"
    # Only the files that hold CUDA tests are collected: other test modules import packages
    # (cityscapesscripts, ...) that a GPU machine need not have.
    local files
    files=$(cd "$ROOT" && grep -l "pytest.mark.cuda" tests/test_*.py)
    echo "test files with CUDA tests: $(echo $files)"
    (cd "$ROOT" && "$VPY" -m pytest -m cuda $files -q -rs -p no:cacheprovider --junitxml="$xml")
    local rc=$?
    "$VPY" - "$xml" "$DEVICE" <<'EOF' || return 1
import sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
n, skipped = int(suite.get("tests")), int(suite.get("skipped"))
bad = int(suite.get("failures")) + int(suite.get("errors"))
print(f"CUDA tests: {n} collected, {skipped} skipped, {bad} failed")
expected = (skipped == n) if sys.argv[2] == "cpu" else (skipped == 0)
sys.exit(0 if n > 0 and bad == 0 and expected else 1)
EOF
    return $rc
}

amp_training() {
    local amp=True
    [ "$DEVICE" = cpu ] && amp=False  # detectron2's AMPTrainer needs CUDA
    (cd "$ROOT" && DETECTRON2_DATASETS="$WORK/datasets" "$VPY" train_net.py \
        --config-file configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml \
        MODEL.DEVICE "$DEVICE" SOLVER.AMP.ENABLED "$amp" SOLVER.MAX_ITER "$TRAIN_ITERS" \
        TEST.EVAL_PERIOD "$TRAIN_ITERS" SOLVER.CHECKPOINT_PERIOD 100000 \
        OUTPUT_DIR "$WORK/train") >"$WORK/train.log" 2>&1
    local rc=$?
    grep -E "AMPTrainer|eta:|PQ|Traceback|Error" "$WORK/train.log" | tail -n 25
    [ "$rc" -eq 0 ] || { tail -n 30 "$WORK/train.log"; return "$rc"; }
    "$VPY" - "$WORK/train/metrics.json" "$TRAIN_ITERS" <<'EOF'
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
logged = [r for r in rows if "total_loss" in r]
losses = [r["total_loss"] for r in logged]
pq = [r[k] for r in rows for k in r if k.endswith("/PQ")]
print(f"losses logged at iterations {[r['iteration'] for r in logged]}: {losses}; PQ {pq}")
ok = losses and all(map(math.isfinite, losses)) and logged[-1]["iteration"] == int(sys.argv[2]) - 1
sys.exit(0 if ok and pq else 1)
EOF
}

timed_inference() {
    (cd "$ROOT" && "$VPY" benchmarks/gpu_inference.py --device "$DEVICE" --size "$INFER_SIZE" $INFER_ARGS)
}

# Inside a function, so that bash has read all of it before running any (safe to edit meanwhile).
main() {
    export ROOT BUNDLE REQS PYTHON DEVICE WORK VENV VPY TRAIN_ITERS INFER_SIZE INFER_ARGS
    export -f environment make_venv requirements pip_bundle install_dependencies build_detectron2 \
        use_detectron2_sources install_project cuda_tests amp_training timed_inference

    step "environment" 60 environment
    ENV_LINE=$(env_line 2>&1)
    [ "$FAILED" -eq 0 ] || summary
    step "venv over the machine's torch" 60 make_venv || summary
    step "install detectron2's dependencies from the bundle" 120 install_dependencies || summary
    unpack_detectron2 || { RESULTS+=("FAIL  unpack detectron2 source"); FAILED=1; summary; }
    export D2_SRC
    if [ "$BUILD_OPS" = 1 ]; then
        if ! step "build detectron2 with its compiled ops" 300 build_detectron2; then
            step "detectron2 without compiled ops (fallback)" 30 use_detectron2_sources || summary
        fi
    else
        step "detectron2 without compiled ops" 30 use_detectron2_sources || summary
    fi
    step "install panoptic_ext (editable)" 90 install_project || summary
    step "CUDA tests (pytest -m cuda)" 240 cuda_tests
    step "AMP training run, quick config, $TRAIN_ITERS iterations" 180 amp_training
    step "timed inference, R50 at $INFER_SIZE" 180 timed_inference
    summary
}

main
