"""Install detectron2 into the running interpreter, unless a usable one is already there.

detectron2 is not published on PyPI by its authors. When the interpreter already imports an
official build with compiled ops, nothing is installed. Otherwise this installs PyPI's
``pb1-detectron2==0.6`` sdist (whose Python files equal detectron2's v0.6 tag) after fixing its
three packaging defects:

1. it ships no C++ sources but always builds the extension: the extension list is emptied;
2. its model-zoo configs are not installed: they are moved where its setup.py looks for them;
3. ``from detectron2 import _C`` runs at import time: a stand-in ``_C`` module is added whose
   attributes raise an ImportError naming the missing op.

It also drops the sdist's ``black==21.4b2`` pin, which does not import on Python 3.11 with a
current click (it only formats ``LazyConfig.save`` output); the project installs a current black.

Usage: python tools/install_detectron2.py [--constraints FILE] [--check-compiled | --state]
"""

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "pb1-detectron2==0.6"
STANDIN_MARKER = "__panoptic_ext_standin__"
STANDIN_SOURCE = Path(__file__).with_name("detectron2_C_standin.py")


def detectron2_state() -> str:
    """Return 'compiled', 'standin' or 'missing' for the detectron2 this interpreter imports."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return "missing"
    if getattr(_C, STANDIN_MARKER, False):
        return "standin" if _model_zoo_configs_present() else "missing"
    return "compiled"


def _model_zoo_configs_present() -> bool:
    from detectron2 import model_zoo

    try:
        model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
    except RuntimeError:
        return False
    return True


def _patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if old not in text:
        raise SystemExit(
            f"[install_detectron2] {path}: expected text {old!r} not found; "
            f"the {SDIST} sdist is not the one this script knows how to fix."
        )
    path.write_text(text.replace(old, new))


def _prepare_sdist(workdir: Path, constraints: str) -> Path:
    pip = [sys.executable, "-m", "pip"]
    cmd = pip + [
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--no-build-isolation",
        "-d",
        str(workdir),
        SDIST,
    ]
    if constraints:
        cmd += ["-c", constraints]
    subprocess.run(cmd, check=True)
    archives = list(workdir.glob("pb1*detectron2-0.6.tar.gz"))
    if len(archives) != 1:
        raise SystemExit(f"[install_detectron2] expected one sdist in {workdir}, got {archives}")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(workdir, filter="data")
    src = next(p for p in workdir.iterdir() if p.is_dir() and p.name.startswith("pb1"))

    # Defect 1: no C++ sources shipped, yet the extension is always built.
    _patch(src / "setup.py", "ext_modules=get_extensions(),", "ext_modules=[],")
    _patch(src / "setup.py", '"black==21.4b2",', "")
    # Defect 2: configs live in detectron2/model_zoo/configs but setup.py globs ./configs.
    zoo_configs = src / "detectron2" / "model_zoo" / "configs"
    if zoo_configs.is_dir() and not zoo_configs.is_symlink():
        shutil.move(str(zoo_configs), str(src / "configs"))
    # Defect 3: `from detectron2 import _C` at import time.
    shutil.copyfile(STANDIN_SOURCE, src / "detectron2" / "_C.py")
    return src


def _refresh_standin() -> None:
    """Replace an installed stand-in ``_C`` that differs from this checkout's."""
    spec = importlib.util.find_spec("detectron2")
    installed = Path(list(spec.submodule_search_locations)[0]) / "_C.py"
    if installed.read_bytes() != STANDIN_SOURCE.read_bytes():
        shutil.copyfile(STANDIN_SOURCE, installed)
        print(f"[install_detectron2] updated the stand-in {installed}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constraints", default="", help="pip constraints file")
    parser.add_argument(
        "--check-compiled",
        action="store_true",
        help="exit 0 if a detectron2 with compiled ops imports, else 1",
    )
    parser.add_argument(
        "--state", action="store_true", help="print 'compiled', 'standin' or 'missing' and exit"
    )
    args = parser.parse_args()

    state = detectron2_state()
    if args.state:
        print(state)
        return 0
    if args.check_compiled:
        return 0 if state == "compiled" else 1
    if state == "compiled":
        print("[install_detectron2] a compiled detectron2 is installed: nothing to do")
        return 0
    if state == "standin":
        _refresh_standin()
        print("[install_detectron2] detectron2 v0.6 (no compiled ops) already installed")
        return 0

    print(f"[install_detectron2] installing {SDIST} without compiled ops")
    with tempfile.TemporaryDirectory(prefix="d2_sdist_") as tmp:
        src = _prepare_sdist(Path(tmp), args.constraints)
        cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", str(src)]
        if args.constraints:
            cmd += ["-c", args.constraints]
        # setup.py imports torch even to read metadata, so it runs in this environment.
        subprocess.run(cmd, check=True, cwd=tmp, env={**os.environ, "FORCE_CUDA": "0"})

    # Fresh interpreter: this process may have cached a failed import.
    out = subprocess.run([sys.executable, __file__, "--state"], capture_output=True, text=True)
    if out.stdout.strip() != "standin":
        raise SystemExit(
            f"[install_detectron2] detectron2 did not install correctly:\n"
            f"{out.stdout}{out.stderr}"
        )
    print("[install_detectron2] detectron2 v0.6 installed (Python only, model-zoo configs OK)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
