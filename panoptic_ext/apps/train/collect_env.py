"""Report the environment: which detectron2 is in use and the versions panoptic_ext depends on.

Run ``python -m panoptic_ext.apps.train.collect_env``.
"""

import importlib
import importlib.metadata
import os
import sys
from typing import List, Tuple

from panoptic_ext.compat import detectron2_has_compiled_ops

__all__ = ["collect_env_info"]


def _version(module_name: str, dist_name: str = "") -> str:
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # report any import failure as text, this is a diagnostic tool
        return f"not importable ({type(e).__name__}: {e})"
    version = getattr(module, "__version__", None)
    if version is None and dist_name:
        try:
            version = importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return str(version)


def _detectron2_rows() -> List[Tuple[str, str]]:
    try:
        import detectron2
    except ImportError as e:
        return [("detectron2", f"not importable ({e})")]
    if detectron2_has_compiled_ops():
        from detectron2 import _C

        ops = f"compiled ({_C.get_compiler_version()})"
    else:
        ops = "stand-in (installed without compiled ops)"
    # v0.6 and main both say __version__ "0.6": the distribution tells PyPI's v0.6 sdist
    # (pb1-detectron2) from a build of detectron2's own source.
    dists = importlib.metadata.packages_distributions().get("detectron2", [])
    dist = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in sorted(set(dists)))
    return [
        ("detectron2", detectron2.__version__),
        ("detectron2 distribution", dist or "unknown (not installed by pip)"),
        ("detectron2 path", os.path.dirname(detectron2.__file__)),
        ("detectron2 ops (_C)", ops),
    ]


def collect_env_info() -> str:
    """Return a two-column table of the environment, one row per component."""
    import torch

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("panoptic_ext", _version("panoptic_ext")),
    ]
    rows += _detectron2_rows()
    rows += [
        ("torch", torch.__version__),
        ("CUDA available", str(torch.cuda.is_available())),
        ("torchvision", _version("torchvision")),
        ("numpy", _version("numpy")),
        ("Pillow", _version("PIL", "pillow")),
        ("fvcore", _version("fvcore", "fvcore")),
        ("iopath", _version("iopath", "iopath")),
        ("pycocotools", _version("pycocotools", "pycocotools")),
        ("cityscapesscripts", _version("cityscapesscripts", "cityscapesscripts")),
        ("OpenCV", _version("cv2")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main() -> None:
    print(collect_env_info())


if __name__ == "__main__":
    main()
