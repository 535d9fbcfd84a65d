"""The one place that knows how detectron2 versions differ (v0.6 vs current main).

Code elsewhere asks these functions instead of checking versions itself.
"""

import functools

__all__ = ["detectron2_has_compiled_ops", "launch_supports_cpu"]

# Set on the stand-in ``detectron2/_C.py`` written by tools/install_detectron2.py.
_STANDIN_MARKER = "__panoptic_ext_standin__"


@functools.lru_cache(maxsize=None)
def detectron2_has_compiled_ops() -> bool:
    """True if detectron2's ``_C`` is a real compiled extension, not the installer's stand-in."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, _STANDIN_MARKER, False)


@functools.lru_cache(maxsize=None)
def launch_supports_cpu() -> bool:
    """
    True if ``detectron2.engine.launch`` can start CPU workers (GLOO backend), as on current
    main; detectron2 v0.6's worker asserts that CUDA is available.
    """
    import inspect

    from detectron2.engine import launch as launch_module

    worker = getattr(launch_module, "_distributed_worker", None)
    return worker is not None and "GLOO" in inspect.getsource(worker).upper()
