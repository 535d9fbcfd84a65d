"""
One run of a sweep, resumable: train (or continue from ``last_checkpoint``) with the project's
``Trainer``, evaluate, count FLOPs and parameters, and write ``ablation_result.json`` last.

A run folder is in one of five states: finished (``ablation_result.json``: nothing is done),
diverged (``ablation_diverged.json``: a loss became NaN/inf; not run again, as it would diverge
again, and reported as "diverged"), trained (``last_checkpoint`` names ``model_final.pth``:
evaluated only), interrupted (``last_checkpoint``: training continues with ``--resume``) or new
(trained from the start; files of an attempt that made no checkpoint are overwritten). A folder
whose run (finished, diverged or interrupted) has another config than the sweep now makes for it
is refused (:func:`check_run_folder`), so that no run trains half with one config and half with
another and every row shows the config its run trained with. Every training and evaluation
holds the folder's lock (:func:`~panoptic_ext.apps.train.run_dir.prepare_output_dir`).
"""

import argparse
import contextlib
import json
import logging
import os
import time
from typing import Any, Dict, Iterator, List, Optional

import torch
import yaml
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.ablation.compute import count_compute
from panoptic_ext.apps.ablation.separate import SeparateNetworksPanoptic, separate_network_configs
from panoptic_ext.apps.ablation.spec import Run, run_config
from panoptic_ext.apps.train.checkpoint import PanopticCheckpointer
from panoptic_ext.apps.train.config_loading import default_setup, save_config
from panoptic_ext.apps.train.resume_config import read_saved_run
from panoptic_ext.apps.train.run_dir import prepare_output_dir
from panoptic_ext.apps.train.trainer import Trainer
from panoptic_ext.data.mapper import PanopticFPNDatasetMapper
from panoptic_ext.modeling import build_panoptic_postprocessor

__all__ = [
    "DIVERGED_FILE",
    "RESULT_FILE",
    "RunConfigChanged",
    "check_run_folder",
    "read_diverged",
    "read_result",
    "run_one",
]

logger = logging.getLogger(__name__)

RESULT_FILE = "ablation_result.json"
DIVERGED_FILE = "ablation_diverged.json"
_TIMES_FILE = "ablation_step_times.json"
_FINAL = "model_final.pth"


class RunConfigChanged(RuntimeError):
    """A run's folder holds a run (finished, diverged or interrupted) of another config."""


class _StepTimes(HookBase):
    """Keeps the seconds of every training step (detectron2's IterationTimer "time", data loading
    included, hooks excluded) in OUTPUT_DIR, across interruptions; a step done again after a
    resume replaces its first time. Saved every ``period`` steps and at the end (a hook before it
    that fails in ``after_train`` skips its ``after_train``)."""

    def __init__(self, path: str, period: int = 20):
        self.path, self.period = path, period
        self.times: Dict[str, float] = {}

    def before_train(self):
        self.times = _read_json(self.path) or {}

    def _save(self):
        history = self.trainer.storage.histories().get("time")
        for seconds, iteration in history.values() if history else []:
            self.times[str(int(iteration))] = float(seconds)
        with open(self.path, "w") as f:
            json.dump(self.times, f)

    def after_step(self):
        if (self.trainer.iter + 1) % self.period == 0:
            self._save()

    def after_train(self):
        self._save()


@contextlib.contextmanager
def _run_logging() -> Iterator[None]:
    """Loggers as they were after the run: detectron2's setup_logger adds a console and a file
    handler per OUTPUT_DIR, so without this every later run would log into every earlier run's
    log.txt and print each line once more."""
    names = ("detectron2", "fvcore", "panoptic_ext")
    before = {name: list(logging.getLogger(name).handlers) for name in names}
    try:
        yield
    finally:
        for name in names:
            log = logging.getLogger(name)
            for handler in [h for h in log.handlers if h not in before[name]]:
                log.removeHandler(handler)
                handler.close()
        setup_logger.cache_clear()  # a later run in the same folder adds its handlers again


def _config_differences(old_dump: str, new_dump: str) -> List[str]:
    """``KEY: old -> new`` for the keys two config dumps disagree on (OUTPUT_DIR aside)."""

    def flat(node, prefix=""):
        out = {}
        for k, v in (node or {}).items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    old, new = flat(yaml.safe_load(old_dump)), flat(yaml.safe_load(new_dump))
    keys = sorted((set(old) | set(new)) - {"OUTPUT_DIR"})
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _read_json(path: str) -> Optional[Any]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_result(run_dir: str) -> Optional[Dict[str, Any]]:
    """The finished run's result (``ablation_result.json``), or None."""
    return _read_json(os.path.join(run_dir, RESULT_FILE))


def read_diverged(run_dir: str) -> Optional[Dict[str, Any]]:
    """The record of a run that diverged (``ablation_diverged.json``: "message", "iteration",
    "config"), or None."""
    return _read_json(os.path.join(run_dir, DIVERGED_FILE))


def _write_json(path: str, data: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _saved_config(run_dir: str) -> Optional[tuple]:
    """(what, config text) of the run in ``run_dir``: finished, diverged or interrupted; None for
    a folder that holds no run yet."""
    for what, record in (("finished", read_result(run_dir)), ("diverged", read_diverged(run_dir))):
        if record is not None:
            return what, record.get("config", "")
    if _last_checkpoint(run_dir) is None:
        return None
    path, _, text, _ = read_saved_run(run_dir)
    return f"interrupted at {os.path.basename(path)}", text or ""


def check_run_folder(run: Run, config_file: str, opts, output_root: str) -> None:
    """
    Refuse a folder that holds a run of another config than ``run``'s: resuming it would train
    the rest of an interrupted run with other settings, and a finished or diverged run's row
    would show a config it did not train with.

    Raises:
        RunConfigChanged: naming the folder, its state and every changed key (old -> new).
    """
    run_dir = os.path.join(output_root, run.name)
    saved = _saved_config(run_dir)
    if saved is None:
        return
    what, text = saved
    cfg = run_config(config_file, opts, run, run_dir)
    cfg.RUN.EXISTING_OUTPUT = "overwrite"
    changed = _config_differences(text, cfg.dump()) if text else ["(its config was not saved)"]
    if changed:
        raise RunConfigChanged(
            f"{run_dir} holds a run ({what}) of another config than this sweep makes for it "
            f"({'; '.join(changed)}): give the sweep the settings that run had, use another "
            f"--output, or delete {run_dir} to run that point again from the start"
        )


def _last_checkpoint(output_dir: str) -> Optional[str]:
    path = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def _args(config_file: str, resume: bool, eval_only: bool) -> argparse.Namespace:
    return argparse.Namespace(
        config_file=config_file, resume=resume, eval_only=eval_only, opts=[], num_gpus=1
    )


def _train(cfg: CfgNode, config_file: str) -> Optional[Dict[str, Any]]:
    """Train ``cfg`` to SOLVER.MAX_ITER unless done; returns the final evaluation, if any."""
    checkpoint = _last_checkpoint(cfg.OUTPUT_DIR)
    if checkpoint == _FINAL:
        return None
    resume = checkpoint is not None
    logger.info("%s %s", "Resuming" if resume else "Training", cfg.OUTPUT_DIR)
    lock, messages = prepare_output_dir(cfg, resume=resume)
    try:
        default_setup(cfg, _args(config_file, resume, False), save=not resume)
        for message in messages:
            logger.warning(message)
        trainer = Trainer(cfg)
        trainer.register_hooks([_StepTimes(os.path.join(cfg.OUTPUT_DIR, _TIMES_FILE))])
        trainer.resume_or_load(resume=resume)
        if resume:
            save_config(cfg)  # once the checkpoint is accepted
        return trainer.train()
    finally:
        if lock is not None:
            lock.release()


def _load_final(cfg: CfgNode) -> torch.nn.Module:
    model = Trainer.build_model(cfg)
    PanopticCheckpointer(model, cfg.OUTPUT_DIR, require_complete=True).load(
        os.path.join(cfg.OUTPUT_DIR, _FINAL)
    )
    return model.eval()


def _evaluate(cfg: CfgNode, model: torch.nn.Module, config_file: str) -> Dict[str, Any]:
    lock, _ = prepare_output_dir(cfg, resume=True, eval_only=True)
    try:
        default_setup(cfg, _args(config_file, True, True), save=False)
        return Trainer.test(cfg, model)
    finally:
        if lock is not None:
            lock.release()


def _test_image(cfg: CfgNode) -> torch.Tensor:
    """The first test image, as the test loader gives it to the model."""
    record = DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]
    return PanopticFPNDatasetMapper(cfg, False)(record)["image"]


def _logged_step_times(output_dir: str) -> List[float]:
    """Step times from ``metrics.json`` (detectron2 writes the median of the last 20 steps'
    "time" every 20 steps): for a folder trained without :class:`_StepTimes`'s file."""
    path, times, last = os.path.join(output_dir, "metrics.json"), [], -1
    if not os.path.isfile(path):
        return times
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            if "time" in entry and entry.get("iteration", -1) > last:
                times += [float(entry["time"])] * (entry["iteration"] - last)
                last = entry["iteration"]
    return times


def _train_seconds(output_dir: str, iterations: int) -> float:
    """Sum of the step times; steps without a time (detectron2's timer skips the first few of
    each start) count as the median step."""
    saved = _read_json(os.path.join(output_dir, _TIMES_FILE))
    times = sorted(saved.values()) if saved else _logged_step_times(output_dir)
    if not times:
        return float("nan")
    median = sorted(times)[len(times) // 2]
    return sum(times) + median * max(iterations - len(times), 0)


def _metrics(results: Dict[str, Any]) -> Dict[str, float]:
    """The numbers of a run: PQ, PQ_th, PQ_st, SQ, RQ, mIoU, box AP, mask AP (as evaluated)."""
    out: Dict[str, float] = {}
    for key in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ"):
        if key in results.get("panoptic_seg", {}):
            out[key] = float(results["panoptic_seg"][key])
    if "mIoU" in results.get("sem_seg", {}):
        out["mIoU"] = float(results["sem_seg"]["mIoU"])
    for task, name in (("bbox", "box_AP"), ("segm", "mask_AP")):
        if "AP" in results.get(task, {}):
            out[name] = float(results[task]["AP"])
    return out


def run_one(run: Run, config_file: str, opts, output_root: str) -> Dict[str, Any]:
    """
    Do what is left of ``run`` in ``output_root/run.name`` and return its result. A run whose
    loss becomes NaN/inf is recorded as diverged (``ablation_diverged.json``) and returned as
    ``{"name", "diverged": message}``; it is not trained again by later calls.

    Raises:
        RunConfigChanged: the folder holds a run of another config (:func:`check_run_folder`).
    """
    run_dir = os.path.join(output_root, run.name)
    check_run_folder(run, config_file, opts, output_root)
    done = read_result(run_dir)
    if done is not None:
        logger.info("Run %s finished before: not run again", run.name)
        return done
    diverged = read_diverged(run_dir)
    if diverged is not None:
        logger.warning(
            "Run %s diverged before (%s): not run again, it would diverge again; delete %s to "
            "retry it",
            run.name,
            os.path.join(run_dir, DIVERGED_FILE),
            run_dir,
        )
        return {"name": run.name, "diverged": diverged["message"]}
    cfg = run_config(config_file, opts, run, run_dir)
    cfg.RUN.EXISTING_OUTPUT = "overwrite"  # only ever an attempt without checkpoint
    cfg.freeze()
    try:
        with _run_logging():
            result = _run(run, cfg, config_file, run_dir)
    except FloatingPointError as e:  # the NaN guard, or a checkpoint of non-finite weights
        record = {"name": run.name, "message": str(e), "config": cfg.dump()}
        _write_json(os.path.join(run_dir, DIVERGED_FILE), record)
        logger.error("Run %s diverged: %s", run.name, e)
        return {"name": run.name, "diverged": str(e)}
    _write_json(os.path.join(run_dir, RESULT_FILE), result)  # written last: the run is finished
    return result


def _run(run: Run, cfg: CfgNode, config_file: str, run_dir: str) -> Dict[str, Any]:
    start = time.perf_counter()
    if run.networks == "joint":
        results = _train(cfg, config_file)
        model = _load_final(cfg)
        if not results:
            results = _evaluate(cfg, model, config_file)
        compute = count_compute(model, _test_image(cfg))
        train_seconds = _train_seconds(cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER)
        parts = {}
    else:
        models, parts, train_seconds = {}, {}, 0.0
        for kind, sub in separate_network_configs(cfg).items():
            sub.defrost()
            sub.OUTPUT_DIR = os.path.join(run_dir, kind)
            sub.freeze()
            _train(sub, config_file)
            models[kind] = _load_final(sub)
            train_seconds += _train_seconds(sub.OUTPUT_DIR, sub.SOLVER.MAX_ITER)
            parts[kind] = count_compute(models[kind], _test_image(cfg))
        fused = SeparateNetworksPanoptic(
            models["instance"], models["semantic"], build_panoptic_postprocessor(cfg)
        )
        results = _evaluate(cfg, fused, config_file)
        compute = {
            "gflops": sum(p["gflops"] for p in parts.values()),
            "params_m": sum(p["params_m"] for p in parts.values()),
        }
    return {
        "name": run.name,
        "networks": run.networks,
        "overrides": [[k, v] for k, v in run.overrides],
        "metrics": _metrics(results),
        "iterations": cfg.SOLVER.MAX_ITER,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_iter": round(train_seconds / max(cfg.SOLVER.MAX_ITER, 1), 3),
        # this call's wall-clock time: training (what was left of it), evaluation, FLOPs
        "wall_seconds": round(time.perf_counter() - start, 1),
        "gflops": round(compute["gflops"], 3),
        "params_m": round(compute["params_m"], 3),
        "networks_compute": {
            k: {"gflops": round(p["gflops"], 3), "params_m": round(p["params_m"], 3)}
            for k, p in parts.items()
        },
        "config": cfg.dump(),
    }
