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
  ``allow_partial=True``, ``MODEL.PANOPTIC_EXT.ALLOW_PARTIAL_WEIGHTS``).
"""

import glob
import logging
import os
import pickle
from typing import Any, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm

__all__ = ["CheckpointError", "PanopticCheckpointer", "atomic_torch_save", "atomic_write_text"]

logger = logging.getLogger(__name__)

# Temporary files of an interrupted save: hidden, and not ending in ".pth", so that neither
# ``last_checkpoint`` nor ``get_all_checkpoint_files`` can pick them.
_TMP_PATTERN = ".{name}.{pid}.tmp"


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model."""


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. not permitted on this file system: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, _TMP_PATTERN.format(name=os.path.basename(path), pid=os.getpid()))
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``: ``path`` is then either the old file or the complete new one."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str) -> None:
    """Write a small text file atomically (see :func:`atomic_torch_save`)."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


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
    non-finite weights, ``weights_only`` loading of ``.pth`` files and errors instead of warnings
    for unreadable files and mismatched shapes. See the module docstring.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        allow_partial: bool = False,
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
            save_to_disk (bool): default: only in the main process.
            checkpointables: objects with ``state_dict`` / ``load_state_dict`` (optimizer, ...).
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_partial = allow_partial

    # ---- saving -------------------------------------------------------------------------------
    def _is_local(self) -> bool:
        return "://" not in self.save_dir

    def save(self, name: str, **kwargs: Any) -> None:
        """
        Write ``save_dir/name.pth`` atomically, then point ``last_checkpoint`` at it.

        Raises:
            FloatingPointError: if a model weight is NaN or infinite (nothing is written).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        bad = non_finite_entries(self.model.state_dict())
        if bad:
            last = self.get_checkpoint_file() if self.has_checkpoint() else "none"
            raise FloatingPointError(
                f"not saving checkpoint {name!r}: model weights {bad} are NaN or infinite; the "
                f"last good checkpoint remains {last}"
            )
        if not self._is_local():  # no atomic rename on remote storage
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        os.makedirs(self.save_dir, exist_ok=True)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    def remove_stale_temporary_files(self) -> List[str]:
        """Delete the temporary files of saves that were interrupted (e.g. by SIGKILL)."""
        if not self.save_dir or not self.save_to_disk or not self._is_local():
            return []
        stale = glob.glob(os.path.join(glob.escape(self.save_dir), ".*.tmp"))
        for path in stale:
            logger.warning("Removing %s, left by an interrupted checkpoint save", path)
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
        return super().load(path, *args, **kwargs)

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

    def _load_model(self, checkpoint: Any):
        incompatible = super()._load_model(checkpoint)
        if incompatible is not None and incompatible.incorrect_shapes and not self.allow_partial:
            lines = [
                f"  {key}: {tuple(shape_ckpt)} in the checkpoint, {tuple(shape_model)} in the model"
                for key, shape_ckpt, shape_model in incompatible.incorrect_shapes
            ]
            raise CheckpointError(
                f"{len(lines)} weights of the checkpoint do not fit the model (a checkpoint for "
                "other class counts, e.g. MODEL.ROI_HEADS.NUM_CLASSES or "
                "MODEL.SEM_SEG_HEAD.NUM_CLASSES, or another architecture):\n"
                + "\n".join(lines)
                + "\nSet MODEL.PANOPTIC_EXT.ALLOW_PARTIAL_WEIGHTS True to load the other weights "
                "and train these layers from their initialisation."
            )
        return incompatible
