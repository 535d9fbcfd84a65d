"""Strict loading of checkpoints that detectron2 matches to the model by name heuristics."""

import contextlib
import logging
from typing import Any, Dict, Iterator, List, Tuple

from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

__all__ = ["heuristic_shape_mismatches"]


class _AnyShape(tuple):
    """A shape that ``align_and_update_state_dicts`` finds equal to every other shape."""

    def __ne__(self, other: Any) -> bool:
        return False

    def __eq__(self, other: Any) -> bool:
        return True

    __hash__ = tuple.__hash__


class _ShapeOnly:
    def __init__(self, shape: Any):
        self.shape = _AnyShape(tuple(shape))


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def heuristic_shape_mismatches(
    model_state: Dict[str, Any], checkpoint_state: Dict[str, Any], c2_conversion: bool
) -> List[Tuple[str, tuple, tuple]]:
    """
    ``(model key, checkpoint shape, model shape)`` of the weights that detectron2's name-matching
    heuristics (``align_and_update_state_dicts``, used for Caffe2, pycls and converted
    checkpoints) pair up but would skip because their shapes differ.
    """
    # The same matching, against a model whose shapes fit anything: it then returns every pair.
    placeholders = {k: _ShapeOnly(v.shape) for k, v in model_state.items()}
    with _quiet("detectron2.checkpoint.c2_model_loading"):
        paired = align_and_update_state_dicts(
            placeholders, dict(checkpoint_state), c2_conversion=c2_conversion
        )
    return [
        (k, tuple(v.shape), tuple(model_state[k].shape))
        for k, v in paired.items()
        if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)
    ]
