"""Stand-in for detectron2's compiled ``_C`` extension, written by panoptic_ext's installer.

This detectron2 was installed from the ``pb1-detectron2`` sdist, which ships no C++ sources.
detectron2 v0.6 imports ``_C`` at load time but only uses it inside a few ops (deformable
convolution, rotated boxes, ROIAlignRotated, COCOEvaluator's fast path); Panoptic FPN needs none.
Any use of such an op raises an ImportError that names it; detectron2's environment report
(``collect_env_info``, called by ``default_setup``) gets answers that say so.
"""

__panoptic_ext_standin__ = True

_NOT_BUILT = "not built (detectron2 installed without compiled ops by panoptic_ext's installer)"


def get_compiler_version():
    return _NOT_BUILT


def get_cuda_version():
    return _NOT_BUILT


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"detectron2 compiled op '_C.{name}' is not available: detectron2 was installed without "
        "compiled ops (from the pb1-detectron2 sdist by panoptic_ext's installer). Install an "
        "official detectron2 build to use it."
    )
