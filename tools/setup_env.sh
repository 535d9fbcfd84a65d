#!/usr/bin/env bash
# Create or repair the project's virtual environment in .venv/ (called by `make setup`).
#
# Idempotent: a complete .venv whose stamp matches the current pin files is reused in a second;
# a half-finished, broken or outdated one is repaired (re-running pip is safe), and one whose
# interpreter is unusable is recreated from scratch. The stamp is written last, so an
# interrupted run is never mistaken for a finished one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.panoptic_ext_setup_stamp"
PIN_FILES=(constraints.txt requirements.txt requirements-dev.txt setup.py tools/setup_env.sh
           tools/install_detectron2.py)

log() { echo "[setup] $*"; }

pins_hash() {
    (cd "$ROOT" && cat "${PIN_FILES[@]}") | sha256sum | cut -d' ' -f1
}

venv_python_ok() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null &&
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

venv_complete() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(pins_hash)" ] && venv_python_ok &&
        "$VENV/bin/python" -c 'import torch, torchvision, detectron2, panoptic_ext, pytest' \
            >/dev/null 2>&1 &&
        "$VENV/bin/python" -c 'import onnx, onnxruntime' >/dev/null 2>&1
}

if venv_complete; then
    log ".venv is complete and up to date ($VENV)"
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
if "$PYTHON" "$ROOT/tools/install_detectron2.py" --check-compiled >/dev/null 2>&1; then
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

install_all() {
    local pip=("$VENV/bin/python" -m pip install --disable-pip-version-check
               -c "$ROOT/constraints.txt")
    if [ "$USE_SYSTEM_D2" = 0 ]; then
        log "installing torch and torchvision (from the local wheel cache, ~2 min)"
        "${pip[@]}" torch==2.14.1 torchvision==0.29.1 wheel || return 1
    fi
    log "installing runtime and development requirements"
    "${pip[@]}" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" || return 1
    # panopticapi (COCO's reference PQ code, which detectron2's COCOPanopticEvaluator imports),
    # for the tests that check the outputs against it; its metadata asks for a Pillow that
    # detectron2 v0.6 cannot import, hence --no-deps (it needs only numpy and Pillow).
    "${pip[@]}" --no-deps "panopticapi-lite==0.2.0" || return 1
    # ONNX export and ONNX Runtime (panoptic_ext.export), at the pins of constraints.txt, whose
    # versions work with detectron2 v0.6's numpy<1.24 (ml_dtypes 0.6 needs numpy 2); --no-deps
    # as verified: their other dependencies (protobuf, packaging, typing_extensions) come with
    # the requirements above, bounded in constraints.txt.
    "${pip[@]}" --no-deps onnx onnxruntime ml_dtypes flatbuffers || return 1
    if [ "$USE_SYSTEM_D2" = 0 ]; then
        "$VENV/bin/python" "$ROOT/tools/install_detectron2.py" \
            --constraints "$ROOT/constraints.txt" || return 1
    fi
    log "installing panoptic_ext (editable)"
    "${pip[@]}" --no-build-isolation --no-deps -e "$ROOT" || return 1
    "$VENV/bin/python" -c 'import torch, torchvision, detectron2, panoptic_ext, pytest' || return 1
    "$VENV/bin/python" -c 'import onnx, onnxruntime' || return 1
}

if [ -d "$VENV" ] && ! venv_python_ok; then
    log "found a broken .venv (interpreter unusable or not Python 3.11): recreating it"
    rm -rf "$VENV"
fi
rm -f "$STAMP"
if [ ! -d "$VENV" ]; then
    create_venv
    install_all
else
    log "repairing an incomplete or outdated .venv"
    if ! install_all; then
        # pip cannot see files damaged inside an installed package: start over, once.
        log "repair failed: recreating .venv from scratch"
        rm -rf "$VENV"
        create_venv
        install_all
    fi
fi

pins_hash >"$STAMP"
log "done: $("$VENV/bin/python" -c 'import detectron2, torch; print("detectron2", detectron2.__version__, "torch", torch.__version__)')"
