"""
Sweep specs: which runs an ablation makes, checked before any of them starts.

A spec is a built-in name (:data:`BUILTIN_SWEEPS`, or "paper" for all of them), a YAML file, or
an inline sweep such as ``"MODEL.SEM_SEG_HEAD.LOSS_WEIGHT=0.25,0.5"``. A YAML file
holds one mapping::

    name: lambda_s                  # default: the file's name
    description: ...                # optional
    axis: lambda_s                  # label of the swept value in tables and plots
    overrides: [KEY=VALUE, ...]     # applied to every point
    sweep: ["KEY=v1,v2,v3", ...]    # hydra's override grammar; the cartesian product of the keys
    points:                         # and/or explicit points
      - {name: alternating, value: 1, overrides: [KEY=VALUE, ...], networks: joint|separate}
    repeat: 3                       # each point with SEED, SEED + 1, SEED + 2

Values follow hydra's override grammar (``0.5``, ``true``, ``[1,2]``, ``range(0,3)``, quoted
strings). A run is identified by how its config differs from the base config, so points that
make the same config (in one sweep or several) share one run.
"""

import itertools
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import yaml
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from panoptic_ext.apps.ablation.builtin_sweeps import BUILTIN_GROUPS, BUILTIN_SWEEPS
from panoptic_ext.apps.ablation.separate import NETWORK_KINDS
from panoptic_ext.apps.train.config_check import ConfigError, check_config
from panoptic_ext.apps.train.config_loading import get_panoptic_cfg
from panoptic_ext.data.class_layout import PanopticClassLayout

__all__ = ["SweepSpecError", "Run", "Point", "Sweep", "load_sweeps", "run_config", "unique_runs"]

_SPEC_KEYS = {
    "name": str,
    "description": str,
    "axis": str,
    "overrides": list,
    "sweep": list,
    "points": list,
    "repeat": int,
}
_POINT_KEYS = {"name": str, "value": (int, float, str, bool), "overrides": list, "networks": str}
_SEM_SEG_THINGS = "MODEL.PANOPTIC_EXT.SEM_SEG_THINGS"
_SEM_SEG_CLASSES = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
_NOT_COMPARED = ("OUTPUT_DIR",)  # set per run by the runner


class SweepSpecError(ValueError):
    """A sweep spec is malformed: unknown key, wrong type, bad override, no point."""


@dataclass(frozen=True)
class Run:
    """One training + evaluation: ``overrides`` (KEY, value) on top of the base config."""

    name: str  # its folder in the sweep's output
    overrides: Tuple[Tuple[str, Any], ...]
    networks: str = "joint"


@dataclass
class Point:
    """A point of a sweep: its label, its value on the sweep's axis and its runs (seeds)."""

    label: str
    value: Any
    runs: List[Run] = field(default_factory=list)


@dataclass
class Sweep:
    name: str
    description: str
    axis: str
    points: List[Point]


def _flatten(cfg: CfgNode, prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in cfg.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, CfgNode) else {prefix + k: v})
    return out


def _raw_specs(spec: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(source, raw mapping) of each sweep that ``spec`` names."""
    if spec in BUILTIN_GROUPS:
        return [
            (f"built-in sweep {n!r}", dict(BUILTIN_SWEEPS[n], name=n)) for n in BUILTIN_GROUPS[spec]
        ]
    if spec in BUILTIN_SWEEPS:
        return [(f"built-in sweep {spec!r}", dict(BUILTIN_SWEEPS[spec], name=spec))]
    if spec.endswith((".yaml", ".yml")):
        if not os.path.isfile(spec):
            raise SweepSpecError(f"sweep spec file {spec} does not exist")
        with open(spec) as f:
            try:
                raw = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise SweepSpecError(f"sweep spec file {spec} is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise SweepSpecError(
                f"sweep spec file {spec} must hold a mapping (name, overrides, sweep, points, "
                f"...), got {type(raw).__name__}"
            )
        raw.setdefault("name", os.path.splitext(os.path.basename(spec))[0])
        return [(f"sweep spec file {spec}", raw)]
    if "=" in spec:
        items = spec.split()
        name = "+".join(item.split("=", 1)[0].split(".")[-1] for item in items)
        return [(f"sweep {spec!r}", {"name": name, "sweep": items})]
    known = sorted(BUILTIN_SWEEPS) + sorted(BUILTIN_GROUPS)
    raise SweepSpecError(
        f"sweep spec {spec!r} is neither a built-in sweep ({', '.join(known)}), a .yaml file nor "
        "an inline sweep KEY=v1,v2"
    )


def _check_keys(raw: Dict[str, Any], allowed: Dict[str, Any], where: str) -> None:
    for key, value in raw.items():
        if key not in allowed:
            raise SweepSpecError(f"{where}: unknown key {key!r} (known: {', '.join(allowed)})")
        types = allowed[key]
        if not isinstance(value, types) or (types is int and isinstance(value, bool)):
            names = (
                types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
            )
            raise SweepSpecError(f"{where}: {key} must be a {names}, got {value!r}")
    for key in ("overrides", "sweep"):
        for item in raw.get(key, []):
            if not isinstance(item, str) or "=" not in item:
                raise SweepSpecError(
                    f"{where}: {key} entries must be 'KEY=VALUE' strings, got {item!r} (in a YAML "
                    "[...] list, quote entries that hold commas: ['KEY=v1,v2'])"
                )


def _parse(items: Sequence[str], where: str, sweeps: bool) -> List[Tuple[str, List[Any]]]:
    """Hydra-parse ``KEY=VALUE`` items: (key, list of values) each."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parsed = []
    for item in items:
        try:
            override = OverridesParser.create().parse_overrides([item])[0]
        except HydraException as e:
            raise SweepSpecError(f"{where}: cannot parse {item!r}: {e}") from e
        if override.is_sweep_override():
            if not sweeps:
                raise SweepSpecError(
                    f"{where}: {item!r} sweeps; put it under `sweep`, not `overrides`"
                )
            values = list(override.sweep_iterator())
            if not values:
                raise SweepSpecError(f"{where}: {item!r} sweeps over no value")
        else:
            values = [override.value()]
        parsed.append((override.key_or_group, values))
    return parsed


def _coerce(base: Dict[str, Any], key: str, value: Any) -> Any:
    """Hydra reads ``0`` as an int: a float key takes it as a float (yacs would refuse it)."""
    default = base.get(key)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class _Expander:
    def __init__(self, config_file: str, opts: Sequence[str]):
        self.config_file, self.opts = config_file, list(opts)
        self.base_cfg = get_panoptic_cfg(config_file, opts)
        self.base = _flatten(self.base_cfg)

    def run(self, overrides: List[Tuple[str, Any]], networks: str, where: str) -> Run:
        """The run of a point: its config is built and checked now."""
        opts: List[Any] = []
        for key, value in overrides:
            opts += [key, _coerce(self.base, key, value)]
        keys = [k for k, _ in overrides]
        try:
            cfg = get_panoptic_cfg(self.config_file, self.opts + opts)
            if _SEM_SEG_THINGS in keys and _SEM_SEG_CLASSES not in keys and cfg.DATASETS.TRAIN:
                metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
                if hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
                    layout = PanopticClassLayout.from_metadata(
                        metadata, cfg.MODEL.PANOPTIC_EXT.SEM_SEG_THINGS
                    )
                    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = layout.num_sem_seg_classes
            check_config(cfg)
        except (ConfigError, ValueError) as e:
            raise SweepSpecError(f"{where}: {e}") from e
        flat = _flatten(cfg)
        diff = tuple(
            (k, flat[k]) for k in sorted(flat) if flat[k] != self.base[k] and k not in _NOT_COMPARED
        )
        return Run(_run_name(diff, networks), diff, networks)

    def sweep(self, source: str, raw: Dict[str, Any]) -> Sweep:
        _check_keys(raw, _SPEC_KEYS, source)
        name = raw["name"]
        common = _parse(raw.get("overrides", []), source, sweeps=False)
        common_items = [(k, v[0]) for k, v in common]
        swept = _parse(raw.get("sweep", []), source, sweeps=True)
        raw_points = []
        for combo in itertools.product(*[values for _, values in swept]) if swept else []:
            items = [(k, v) for (k, _), v in zip(swept, combo)]
            # one swept key: its value (the axis names the key); several: KEY=v, KEY2=w
            label = (
                str(combo[0])
                if len(combo) == 1
                else ", ".join(f"{k.split('.')[-1]}={v}" for k, v in items)
            )
            raw_points.append((label, combo[0] if len(combo) == 1 else label, items, "joint"))
        for i, point in enumerate(raw.get("points", [])):
            where = f"{source}, points[{i}]"
            if not isinstance(point, dict):
                raise SweepSpecError(f"{where}: a point must be a mapping, got {point!r}")
            _check_keys(point, _POINT_KEYS, where)
            networks = point.get("networks", "joint")
            if networks not in NETWORK_KINDS:
                raise SweepSpecError(
                    f"{where}: networks must be one of {NETWORK_KINDS}, got {networks!r}"
                )
            items = [(k, v[0]) for k, v in _parse(point.get("overrides", []), where, sweeps=False)]
            label = str(point.get("name", i))
            raw_points.append((label, point.get("value", label), items, networks))
        if not raw_points:
            raise SweepSpecError(f"{source}: the sweep is empty: give `sweep` and/or `points`")
        labels = [p[0] for p in raw_points]
        if len(set(labels)) != len(labels):
            raise SweepSpecError(f"{source}: two points have the same name ({labels})")
        repeat = raw.get("repeat", 1)
        if repeat < 1:
            raise SweepSpecError(f"{source}: repeat must be >= 1, got {repeat}")
        if repeat > 1 and self.base_cfg.SEED < 0:
            raise SweepSpecError(f"{source}: repeat needs a fixed SEED >= 0 in the config")
        points = []
        for label, value, items, networks in raw_points:
            where = f"{source}, point {label!r}"
            runs = [
                self.run(
                    common_items + items + ([("SEED", self.base_cfg.SEED + r)] if r else []),
                    networks,
                    where,
                )
                for r in range(repeat)
            ]
            points.append(Point(label, value, runs))
        axis = raw.get("axis") or (swept[0][0].split(".")[-1] if len(swept) == 1 else "point")
        return Sweep(name, raw.get("description", ""), axis, points)


def _run_name(diff: Sequence[Tuple[str, Any]], networks: str) -> str:
    """A folder name that says what the run changes ("baseline" when nothing)."""
    parts = ([networks] if networks != "joint" else []) + [
        f"{'.'.join(k.split('.')[-2:])}={v}" for k, v in diff
    ]
    name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", ",".join(parts)) or "baseline"
    if len(name) > 120:
        import hashlib

        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def load_sweeps(specs: Sequence[str], config_file: str, opts: Sequence[str] = ()) -> List[Sweep]:
    """
    Parse and check every spec, building and checking the config of every run (unknown keys,
    wrong types, bad choices, class counts), before anything is trained.

    Raises:
        SweepSpecError: naming the spec, the point and the problem.
    """
    if not specs:
        raise SweepSpecError("no sweep given")
    try:
        expander = _Expander(config_file, opts)
    except (ConfigError, ValueError) as e:
        raise SweepSpecError(f"the base config: {e}") from e
    sweeps = [expander.sweep(src, raw) for spec in specs for src, raw in _raw_specs(spec)]
    names = [s.name for s in sweeps]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SweepSpecError(f"several sweeps are named {twice}: give each spec its own name")
    return sweeps


def unique_runs(sweeps: Sequence[Sweep]) -> List[Run]:
    """Every distinct run of ``sweeps``, in order of first appearance."""
    runs: Dict[str, Run] = {}
    for sweep in sweeps:
        for point in sweep.points:
            for run in point.runs:
                runs.setdefault(run.name, run)
    return list(runs.values())


def run_config(config_file: str, opts: Sequence[str], run: Run, output_dir: str) -> CfgNode:
    """The (unfrozen) config of ``run``, writing to ``output_dir``."""
    flat: List[Any] = []
    for key, value in run.overrides:
        flat += [key, value]
    cfg = get_panoptic_cfg(config_file, list(opts) + flat)
    cfg.OUTPUT_DIR = output_dir
    return cfg
