"""``PanopticCheckpointer``: detectron2's checkpointer with atomic saves and strict, clear loads.

detectron2's ``DetectionCheckpointer`` writes ``model_XXXX.pth`` and ``last_checkpoint`` in place
(a kill during the write leaves a truncated file that ``--resume`` then picks), loads ``.pth``
files with a full unpickler, and only *warns* about weights whose shape does not fit the model
(so a checkpoint for other class counts silently trains freshly initialised heads), also in
Caffe2 / pycls / converted ``.pkl`` files, whose names it matches by heuristics. Here saves are
atomic (:mod:`.checkpoint_files`), never of non-finite weights, and keep the newest
``max_to_keep`` periodic checkpoints; ``.pth`` files are read with ``weights_only=True``; files
that are not checkpoints, weights that do not fit (in every format) or match nothing, and a
stalled download are :class:`CheckpointError` s naming the file.
"""

import contextlib
import logging
import os
import pickle
import urllib.error
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils import comm

from panoptic_ext.apps.train.checkpoint_files import (
    CheckpointError,
    CheckpointSaveError,
    atomic_torch_save,
    atomic_write_text,
    prune_periodic_checkpoints,
    read_last_checkpoint,
    socket_timeout,
    stale_temporary_files,
)

__all__ = [
    "CheckpointError",
    "CheckpointSaveError",
    "PanopticCheckpointer",
    "atomic_torch_save",
    "atomic_write_text",
    "read_last_checkpoint",
]

logger = logging.getLogger(__name__)
# The settings named in messages, as a YAML config writes them.
YAML_OPTION_NAMES = {
    "allow_partial": "RUN.ALLOW_PARTIAL_WEIGHTS True",
    "download_timeout": "RUN.WEIGHTS_DOWNLOAD_TIMEOUT",
}


def non_finite_entries(state_dict: Dict[str, Any], limit: int = 10) -> List[str]:
    """Names of the floating-point tensors of ``state_dict`` holding NaN or infinity."""
    bad = []
    for k, v in state_dict.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
            bad.append(k)
            if len(bad) >= limit:
                break
    return bad


def _short(error: BaseException) -> str:
    """The informative line of an error message (torch's weights_only errors are long)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error" in line:
            return line
    return lines[0] if lines else repr(error)


class PanopticCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` (same constructor, same files) with atomic saves, a refusal to save
    non-finite weights, retention of periodic checkpoints, ``weights_only`` loading of ``.pth``
    files, a download timeout, and errors instead of warnings for unreadable files, mismatched
    shapes (in every format) and weights that match nothing. See the module docstring.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        allow_partial: bool = False,
        require_complete: bool = False,
        max_to_keep: int = 0,
        download_timeout: Optional[float] = 60.0,
        extra_state: Optional[Dict[str, Any]] = None,
        save_to_disk: Optional[bool] = None,
        option_names: Mapping[str, str] = YAML_OPTION_NAMES,
        **checkpointables: Any,
    ):
        """
        Args:
            model (nn.Module): the model (DDP wrappers are unwrapped).
            save_dir (str): where checkpoints and ``last_checkpoint`` go.
            allow_partial (bool): load a checkpoint whose weights partly do not fit the model
                (e.g. other class counts), leaving those layers as initialised, with a warning;
                otherwise a :class:`CheckpointError`.
            require_complete (bool): every weight of the model must be in the checkpoint (for
                evaluation: a missing one would be evaluated untrained), unless ``allow_partial``.
            max_to_keep (int): periodic checkpoints (``model_XXXXXXX.pth``) kept in ``save_dir``,
                the newest; older ones are deleted after each save. <= 0 keeps all.
                ``model_final.pth`` and other names are never deleted.
            download_timeout (float): seconds a download of a URL may go without data (None:
                no limit).
            extra_state (dict): saved in every checkpoint (e.g. ``{"config": cfg.dump()}``).
            save_to_disk (bool): default: only in the main process.
            option_names (dict): how messages name the settings ``allow_partial`` and
                ``download_timeout`` (:data:`YAML_OPTION_NAMES`; a Python config's differ).
            checkpointables: objects with ``state_dict`` / ``load_state_dict`` (optimizer, ...).
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_partial = allow_partial
        self.require_complete = require_complete
        self.max_to_keep = max_to_keep
        self.download_timeout = download_timeout
        self.extra_state = dict(extra_state or {})
        self.option_names = dict(option_names)
        self._loading = ""

    # ---- saving -------------------------------------------------------------------------------
    def _is_local(self) -> bool:
        return "://" not in self.save_dir

    def _last_good(self) -> str:
        try:
            return self.get_checkpoint_file() or "none"
        except CheckpointError:  # an empty last_checkpoint
            return "none"

    def get_checkpoint_file(self) -> str:
        """The checkpoint ``last_checkpoint`` names ("" if none; an empty one is an error)."""
        if not self._is_local():
            return super().get_checkpoint_file()
        return read_last_checkpoint(self.save_dir) or ""

    def save(self, name: str, **kwargs: Any) -> None:
        """
        Write ``save_dir/name.pth`` atomically, then point ``last_checkpoint`` at it, then delete
        periodic checkpoints beyond ``max_to_keep``.

        Raises:
            FloatingPointError: if a model weight is NaN or infinite (nothing is written).
            CheckpointSaveError: the file could not be written (e.g. the disk is full).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        bad = non_finite_entries(self.model.state_dict())
        if bad:
            raise FloatingPointError(
                f"not saving checkpoint {name!r}: model weights {bad} are NaN or infinite; the "
                f"last good checkpoint remains {self._last_good()}"
            )
        if not self._is_local():  # no atomic rename on remote storage
            return super().save(name, **self.extra_state, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(self.extra_state)
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        os.makedirs(self.save_dir, exist_ok=True)
        self.logger.info("Saving checkpoint to %s", path)
        try:
            atomic_torch_save(data, path)
        except CheckpointSaveError as e:
            raise CheckpointSaveError(
                e.errno, f"{e.strerror}; last_checkpoint still names {self._last_good()}"
            ) from e
        self.tag_last_checkpoint(basename)
        prune_periodic_checkpoints(self.save_dir, self.max_to_keep, keep=path)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    def remove_stale_temporary_files(self) -> List[str]:
        """Delete the temporary files of saves that were interrupted (e.g. by SIGKILL); those of
        a save still running in another process are kept."""
        if not self.save_dir or not self.save_to_disk or not self._is_local():
            return []
        stale = stale_temporary_files(self.save_dir)
        for path in stale:
            logger.warning("Removing %s, left by an interrupted checkpoint save", path)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return stale

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        if resume:
            self.remove_stale_temporary_files()
        return super().resume_or_load(path, resume=resume)

    # ---- loading ------------------------------------------------------------------------------
    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        # In distributed jobs detectron2 checks on every worker that the main one has the file.
        if path and "://" not in path and comm.get_world_size() == 1 and not os.path.isfile(path):
            raise CheckpointError(f"checkpoint {path} does not exist")
        self._loading = path
        if not path.startswith(("http://", "https://", "ftp://")):
            return super().load(path, *args, **kwargs)
        try:
            with socket_timeout(self.download_timeout):
                return super().load(path, *args, **kwargs)
        except (TimeoutError, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                reason = (
                    f"no data for {self.download_timeout:g} s (the server stalls; "
                    f"{self.option_names['download_timeout']} sets this limit)"
                )
            raise CheckpointError(f"cannot download checkpoint {path}: {reason}") from e

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if not os.path.isfile(filename):
            raise CheckpointError(f"checkpoint {filename} does not exist")
        if os.path.getsize(filename) == 0:
            raise CheckpointError(f"checkpoint {filename} is an empty file")
        if filename.endswith((".pkl", ".pyth")):
            # detectron2 / Detectron / pycls model-zoo formats are pickles, not zip archives.
            try:
                loaded = super()._load_file(filename)
            except Exception as e:  # whatever unpickling or format checks raise
                raise CheckpointError(
                    f"{filename} is not a readable detectron2 model-zoo checkpoint: "
                    f"{type(e).__name__}: {_short(e)}"
                ) from e
        else:
            loaded = self._load_pth(filename)
        return self._check_contents(loaded, filename)

    def _load_pth(self, filename: str) -> Dict[str, Any]:
        try:
            loaded = torch.load(filename, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as e:
            # Raised for pickles holding more than tensors and plain containers, and for files
            # that are no pickle at all.
            raise CheckpointError(
                f"{filename} cannot be loaded with torch.load(weights_only=True): it is not a "
                f"PyTorch checkpoint, or it holds arbitrary Python objects ({_short(e)}). A "
                "trusted detectron2 model-zoo pickle must have the .pkl extension."
            ) from e
        except Exception as e:  # torch raises RuntimeError, KeyError, EOFError... on bad files
            raise CheckpointError(
                f"{filename} is not a readable PyTorch checkpoint (truncated or corrupted "
                f"file?): {type(e).__name__}: {_short(e)}"
            ) from e
        if isinstance(loaded, dict) and "model" not in loaded:
            loaded = {"model": loaded}  # a bare state_dict, as DetectionCheckpointer accepts
        return loaded

    @staticmethod
    def _check_contents(loaded: Any, filename: str) -> Dict[str, Any]:
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            raise CheckpointError(
                f"{filename} is not a checkpoint: expected a dict with a 'model' state_dict, got "
                f"{type(loaded).__name__}"
            )
        weights = loaded["model"]
        bad = [
            k
            for k, v in weights.items()
            if not hasattr(v, "shape") or not hasattr(v, "dtype")  # tensor or ndarray
        ]
        if not weights or bad:
            what = "no weights" if not weights else f"non-tensor entries {bad[:5]}"
            raise CheckpointError(f"{filename} is not a checkpoint: its 'model' entry has {what}")
        return loaded

    def _shape_error(self, mismatched: List[Tuple[str, tuple, tuple]]) -> CheckpointError:
        lines = [
            f"  {key}: {tuple(shape_ckpt)} in the checkpoint, {tuple(shape_model)} in the model"
            for key, shape_ckpt, shape_model in mismatched
        ]
        return CheckpointError(
            f"{len(lines)} weights of the checkpoint {self._loading} do not fit the model (a "
            "checkpoint for other class counts or another architecture):\n"
            + "\n".join(lines)
            + f"\nSet {self.option_names['allow_partial']} to load the other weights "
            "and train these layers from their initialisation."
        )

    def _load_model(self, checkpoint: Any):
        if checkpoint.get("matching_heuristics", False) and not self.allow_partial:
            # detectron2 matches Caffe2 / pycls / converted names by suffix and drops, with a
            # warning only, the matched weights whose shapes differ.
            mismatched = _heuristic_shape_mismatches(
                self.model.state_dict(),
                checkpoint["model"],
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
            )
            if mismatched:
                raise self._shape_error(mismatched)
        checkpoint_keys = list(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        if incompatible is None:
            return None
        if incompatible.incorrect_shapes and not self.allow_partial:
            raise self._shape_error(incompatible.incorrect_shapes)
        self._check_loaded(incompatible, checkpoint_keys)
        return incompatible

    def _check_loaded(self, incompatible: Any, checkpoint_keys: List[str]) -> None:
        # BatchNorm fills in a missing num_batches_tracked itself: it never counts as loaded.
        model_keys = [k for k in self.model.state_dict() if not k.endswith("num_batches_tracked")]
        missing = set(incompatible.missing_keys)
        missing.update(k for k, _, _ in incompatible.incorrect_shapes)
        if model_keys and all(k in missing for k in model_keys):
            raise CheckpointError(
                f"none of the {len(checkpoint_keys)} weights of {self._loading} match the "
                f"model's {len(model_keys)}: the checkpoint has names like "
                f"{checkpoint_keys[:3]}, the model {model_keys[:3]} (a checkpoint of another "
                "architecture?)"
            )
        if self.require_complete and missing and not self.allow_partial:
            shown = sorted(missing)
            raise CheckpointError(
                f"{self._loading} lacks {len(missing)} of the model's {len(model_keys)} weights "
                f"({', '.join(shown[:8])}{', ...' if len(shown) > 8 else ''}): those layers would "
                "be evaluated untrained. Use a checkpoint of this model, or set "
                f"{self.option_names['allow_partial']} to evaluate anyway."
            )


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


def _heuristic_shape_mismatches(
    model_state: Dict[str, Any], checkpoint_state: Dict[str, Any], c2_conversion: bool
) -> List[Tuple[str, tuple, tuple]]:
    """
    ``(model key, checkpoint shape, model shape)`` of the weights that detectron2's name-matching
    heuristics (``align_and_update_state_dicts``, used for Caffe2, pycls and converted
    checkpoints) pair up but would skip because their shapes differ.
    """
    # The same matching, against a model whose shapes fit anything: it then returns every pair.
    placeholders = {k: _ShapeOnly(v.shape) for k, v in model_state.items()}
    log = logging.getLogger("detectron2.checkpoint.c2_model_loading")
    level = log.level
    log.setLevel(logging.ERROR)  # its table of matched names, printed again by the real load
    try:
        paired = align_and_update_state_dicts(
            placeholders, dict(checkpoint_state), c2_conversion=c2_conversion
        )
    finally:
        log.setLevel(level)
    return [
        (k, tuple(v.shape), tuple(model_state[k].shape))
        for k, v in paired.items()
        if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)
    ]
