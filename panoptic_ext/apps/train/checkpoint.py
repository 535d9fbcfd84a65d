"""``PanopticCheckpointer``: detectron2's checkpointer with atomic saves and strict, clear loads.

detectron2's ``DetectionCheckpointer`` writes ``model_XXXX.pth`` and ``last_checkpoint`` in place
(a kill during the write leaves a truncated file that ``--resume`` then picks), loads ``.pth``
files with a full unpickler, and only *warns* about weights whose shape does not fit the model
(so a checkpoint for other class counts silently trains freshly initialised heads). Here:

- saves go to a hidden temporary file in the same directory, are fsync'ed, then renamed over the
  target (``os.replace``, atomic on POSIX); ``last_checkpoint`` is updated the same way, after the
  checkpoint itself, so it always names a complete file;
- a checkpoint whose weights are not finite is never written: the last good one stays the one to
  resume from;
- ``.pth`` files are read with ``torch.load(weights_only=True)`` (tensors and plain containers
  only, no code execution); detectron2 / Detectron model-zoo ``.pkl`` files still need pickle;
- a file that is missing, truncated or not a checkpoint, and weights whose shapes do not fit the
  model, raise :class:`CheckpointError` listing the keys and both shapes (unless
  ``allow_partial=True``, ``RUN.ALLOW_PARTIAL_WEIGHTS``), in every format: also
  Caffe2 / pycls / converted ``.pkl`` files, whose name-matching heuristics detectron2 lets drop
  mismatched layers with a warning; so does a file none of whose weights match the model, and,
  with ``require_complete=True`` (evaluation), one that lacks some of the model's weights;
- older periodic checkpoints beyond ``max_to_keep`` are deleted after each save;
- a download of a URL fails after ``download_timeout`` seconds without data instead of hanging;
- a full disk or Ctrl-C during a save is reported as such (:mod:`.checkpoint_files`).
"""

import contextlib
import logging
import os
import pickle
import urllib.error
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm

from panoptic_ext.apps.train.checkpoint_files import (
    CheckpointSaveError,
    atomic_torch_save,
    atomic_write_text,
    prune_periodic_checkpoints,
    socket_timeout,
    stale_temporary_files,
)
from panoptic_ext.apps.train.checkpoint_match import heuristic_shape_mismatches

__all__ = [
    "CheckpointError",
    "CheckpointSaveError",
    "PanopticCheckpointer",
    "atomic_torch_save",
    "atomic_write_text",
]

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model."""


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
            checkpointables: objects with ``state_dict`` / ``load_state_dict`` (optimizer, ...).
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_partial = allow_partial
        self.require_complete = require_complete
        self.max_to_keep = max_to_keep
        self.download_timeout = download_timeout
        self.extra_state = dict(extra_state or {})
        self._loading = ""

    # ---- saving -------------------------------------------------------------------------------
    def _is_local(self) -> bool:
        return "://" not in self.save_dir

    def _last_good(self) -> str:
        return self.get_checkpoint_file() if self.has_checkpoint() else "none"

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
                    "RUN.WEIGHTS_DOWNLOAD_TIMEOUT sets this limit)"
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
            "checkpoint for other class counts, e.g. MODEL.ROI_HEADS.NUM_CLASSES or "
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES, or another architecture):\n"
            + "\n".join(lines)
            + "\nSet RUN.ALLOW_PARTIAL_WEIGHTS True to load the other weights "
            "and train these layers from their initialisation."
        )

    def _load_model(self, checkpoint: Any):
        if checkpoint.get("matching_heuristics", False) and not self.allow_partial:
            # detectron2 matches Caffe2 / pycls / converted names by suffix and drops, with a
            # warning only, the matched weights whose shapes differ.
            mismatched = heuristic_shape_mismatches(
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
                "RUN.ALLOW_PARTIAL_WEIGHTS True to evaluate anyway."
            )
