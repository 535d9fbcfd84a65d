"""Stand-in for detectron2's compiled ``_C`` extension, written by panoptic_ext's installer.

This detectron2 was installed from the ``pb1-detectron2`` sdist, which ships no C++ sources.
detectron2 v0.6 imports ``_C`` at load time but only uses it inside a few ops (deformable
convolution, rotated boxes, ROIAlignRotated, COCOEvaluator's fast path); Panoptic FPN needs none.
Any use of such an op raises an ImportError that names it.
"""

__panoptic_ext_standin__ = True


def __getattr__(name):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"detectron2 compiled op '_C.{name}' is not available: detectron2 was installed without "
        "compiled ops (from the pb1-detectron2 sdist by panoptic_ext's installer). Install an "
        "official detectron2 build to use it."
    )
