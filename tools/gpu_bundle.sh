#!/usr/bin/env bash
# Gather into gpu_bundle/ (git-ignored) what tools/gpu_check.sh needs on a GPU machine that has
# a python3 with torch but no network (`make gpu-bundle`):
#   gpu_bundle/detectron2-src.tar.gz   detectron2 main's source, built there against its torch
#   gpu_bundle/wheels/                 tools/gpu_bundle_requirements.txt as wheels; the compiled
#                                      ones for every CPython in $PY_VERSIONS
#   gpu_bundle/MANIFEST.txt            what is in the bundle, with sizes and sha256
# Runs where PyPI is reachable. Usage: bash tools/gpu_bundle.sh [OUT_DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/gpu_bundle}"
REQS="$ROOT/tools/gpu_bundle_requirements.txt"
D2_TARBALL="${D2_TARBALL:-$ROOT/../shared/detectron2-main-02b5c4e.tar.gz}"
PY_VERSIONS="${PY_VERSIONS:-3.10 3.11 3.12 3.13 3.14}"
PYTHON="${PYTHON:-python3}"
MAX_MB=56  # the device tool carries 64 MiB with the working tree

log() { echo "[gpu-bundle] $*"; }

if [ ! -f "$D2_TARBALL" ]; then
    echo "[gpu-bundle] error: detectron2 source tarball not found: $D2_TARBALL" \
         "(set D2_TARBALL=/path/to/detectron2-main-*.tar.gz)" >&2
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT/wheels"
cp "$D2_TARBALL" "$OUT/detectron2-src.tar.gz"
basename "$D2_TARBALL" >"$OUT/DETECTRON2_SOURCE"

# Requirement lines without their comments, split into pure-Python and compiled ones.
pure=() compiled=()
while IFS= read -r line; do
    req="${line%%#*}"
    req="${req//[[:space:]]/}"
    [ -z "$req" ] && continue
    if [[ "$line" == *"# compiled"* ]]; then compiled+=("$req"); else pure+=("$req"); fi
done <"$REQS"

pip=("$PYTHON" -m pip --disable-pip-version-check -q)
log "pure-Python wheels (sdists such as fvcore's are built into py3 wheels): ${pure[*]}"
"${pip[@]}" wheel --no-deps -w "$OUT/wheels" "${pure[@]}"
for v in $PY_VERSIONS; do
    log "compiled wheels for CPython $v: ${compiled[*]}"
    for req in "${compiled[@]}"; do
        "${pip[@]}" download --no-deps --only-binary=:all: --implementation cp \
            --python-version "$v" --platform manylinux2014_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
            -d "$OUT/wheels" "$req" || log "warning: no $req wheel for CPython $v (skipped)"
    done
done

(cd "$OUT" && find . -type f ! -name MANIFEST.txt | sort | while read -r f; do
    printf '%10d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "$f"
done) >"$OUT/MANIFEST.txt"
size_mb=$(( $(du -sb "$OUT" | cut -f1) / 1048576 ))
log "$(wc -l <"$OUT/MANIFEST.txt") files, ${size_mb} MiB in $OUT"
if [ "$size_mb" -gt "$MAX_MB" ]; then
    echo "[gpu-bundle] error: ${size_mb} MiB is over ${MAX_MB} MiB (the device tool's limit)" >&2
    exit 1
fi
