#!/usr/bin/env bash
# Create or repair the project's virtual environment in .venv/ (called by `make setup`).
#
# With D2_SOURCE=<detectron2 source tarball> (`make setup-d2main`), it builds that detectron2 with
# its compiled ops instead of installing v0.6, into VENV, under the pins in CONSTRAINTS.
#
# Idempotent: a complete .venv whose stamp matches the current pin files is reused in a second;
# a half-finished, broken or outdated one is repaired (re-running pip is safe), and one whose
# interpreter is unusable is recreated from scratch. The stamp is written last, so an
# interrupted run is never mistaken for a finished one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
CONSTRAINTS="${CONSTRAINTS:-$ROOT/constraints.txt}"
D2_SOURCE="${D2_SOURCE:-}"
STAMP="$VENV/.panoptic_ext_setup_stamp"
# sha256 of the D2_SOURCE tarball that detectron2 was last built from (skips a 4-minute rebuild).
D2_BUILT="$VENV/.detectron2_source_sha256"
PIN_FILES=(requirements.txt requirements-dev.txt setup.py tools/setup_env.sh
           tools/install_detectron2.py tools/detectron2_C_standin.py)

log() { echo "[setup] $*"; }

if [ -n "$D2_SOURCE" ]; then
    if [ ! -f "$D2_SOURCE" ]; then
        echo "[setup] error: D2_SOURCE=$D2_SOURCE: no such detectron2 source tarball." >&2
        exit 1
    fi
    D2_SOURCE="$(realpath "$D2_SOURCE")"
fi

pins_hash() {
    { (cd "$ROOT" && cat "${PIN_FILES[@]}") && cat "$CONSTRAINTS" &&
        if [ -n "$D2_SOURCE" ]; then sha256sum <"$D2_SOURCE"; fi; } | sha256sum | cut -d' ' -f1
}

# With D2_SOURCE the venv must hold detectron2 with real compiled ops, not v0.6's stand-in.
d2_ok() {
    [ -z "$D2_SOURCE" ] ||
        "$VENV/bin/python" "$ROOT/tools/install_detectron2.py" --check-compiled >/dev/null 2>&1
}

venv_python_ok() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null &&
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

venv_complete() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(pins_hash)" ] && venv_python_ok &&
        "$VENV/bin/python" -c 'import torch, torchvision, detectron2, panoptic_ext, pytest' \
            >/dev/null 2>&1 && d2_ok &&
        "$VENV/bin/python" -c 'import onnx, onnxruntime' >/dev/null 2>&1
}

if venv_complete; then
    log "venv is complete and up to date ($VENV)"
    exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "[setup] error: '$PYTHON' not found; panoptic_ext needs Python 3.11" \
         "(set PYTHON=/path/to/python3.11)." >&2
    exit 1
fi

# An official detectron2 with compiled ops in the base interpreter is used as it is: the venv
# then sees the base site-packages and nothing is installed over torch or detectron2.
USE_SYSTEM_D2=0
if [ -z "$D2_SOURCE" ] &&
    "$PYTHON" "$ROOT/tools/install_detectron2.py" --check-compiled >/dev/null 2>&1; then
    USE_SYSTEM_D2=1
    log "base interpreter has a compiled detectron2: using it (no torch/detectron2 install)"
fi

create_venv() {
    log "creating $VENV"
    if [ "$USE_SYSTEM_D2" = 1 ]; then
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
}

# Build and install detectron2 with its compiled ops from the D2_SOURCE tarball (one top folder).
build_detectron2() {
    local want src
    want="$(sha256sum <"$D2_SOURCE" | cut -d' ' -f1)"
    if [ "$(cat "$D2_BUILT" 2>/dev/null)" = "$want" ] && d2_ok; then
        log "detectron2 from $D2_SOURCE is already built"
        return 0
    fi
    rm -f "$D2_BUILT"
    src="$(mktemp -d)"
    tar xzf "$D2_SOURCE" -C "$src" || return 1
    set -- "$src"/*/
    log "building detectron2 with its compiled ops from $D2_SOURCE (~4 min on 2 cores)"
    # --no-build-isolation: its setup.py imports torch. --use-pep517: setuptools >= 81 dropped
    # the legacy path. CPU ops only (FORCE_CUDA=0); MAX_JOBS bounds the parallel compiles.
    (cd "$1" && MAX_JOBS="${MAX_JOBS:-$(nproc)}" FORCE_CUDA=0 "${pip[@]}" \
        --no-build-isolation --use-pep517 .) || { rm -rf "$src"; return 1; }
    rm -rf "$src"
    echo "$want" >"$D2_BUILT"
}

install_all() {
    local pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -c "$CONSTRAINTS")
    if [ "$USE_SYSTEM_D2" = 0 ]; then
        log "installing torch and torchvision (from the local wheel cache, ~2 min)"
        "${pip[@]}" torch==2.14.1 torchvision==0.29.1 wheel ${D2_SOURCE:+ninja} || return 1
    fi
    log "installing runtime and development requirements"
    "${pip[@]}" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" || return 1
    # panopticapi (COCO's reference PQ code, which detectron2's COCOPanopticEvaluator imports),
    # for the tests that check the outputs against it; its metadata asks for a Pillow that
    # detectron2 v0.6 cannot import, hence --no-deps (it needs only numpy and Pillow).
    "${pip[@]}" --no-deps "panopticapi-lite==0.2.0" || return 1
    # ONNX export and ONNX Runtime (panoptic_ext.apps.export), at the pins of the constraints file,
    # versions that work with detectron2 v0.6's numpy<1.24 (ml_dtypes 0.6 needs numpy 2) and
    # with numpy 2; --no-deps as verified: their other dependencies (protobuf, packaging,
    # typing_extensions) come with the requirements above, bounded in the constraints file.
    "${pip[@]}" --no-deps onnx onnxruntime ml_dtypes flatbuffers || return 1
    if [ -n "$D2_SOURCE" ]; then
        build_detectron2 || return 1
    elif [ "$USE_SYSTEM_D2" = 0 ]; then
        "$VENV/bin/python" "$ROOT/tools/install_detectron2.py" \
            --constraints "$CONSTRAINTS" || return 1
    fi
    log "installing panoptic_ext (editable)"
    "${pip[@]}" --no-build-isolation --no-deps -e "$ROOT" || return 1
    "$VENV/bin/python" -c 'import torch, torchvision, detectron2, panoptic_ext, pytest' || return 1
    "$VENV/bin/python" -c 'import onnx, onnxruntime' || return 1
}

if [ -d "$VENV" ] && ! venv_python_ok; then
    log "found a broken venv (interpreter unusable or not Python 3.11): recreating it"
    rm -rf "$VENV"
fi
rm -f "$STAMP"
if [ ! -d "$VENV" ]; then
    create_venv
    install_all
else
    log "repairing an incomplete or outdated venv ($VENV)"
    if ! install_all; then
        # pip cannot see files damaged inside an installed package: start over, once.
        log "repair failed: recreating $VENV from scratch"
        rm -rf "$VENV"
        create_venv
        install_all
    fi
fi

pins_hash >"$STAMP"
log "done: $("$VENV/bin/python" -c 'import detectron2, torch; print("detectron2", detectron2.__version__, "torch", torch.__version__)')"
