"""What an export directory holds and how it is checked: ``export.json`` and the identity that
the model file records (project version, export schema, format, opset)."""

import hashlib
import json
import os
from typing import Any, Dict

__all__ = [
    "EXPORT_FILE",
    "EXPORT_SCHEMA",
    "FORMATS",
    "MIN_OPSET",
    "ExportError",
    "export_identity",
    "project_version",
    "read_export_meta",
    "check_identity",
    "check_model_file",
    "file_digest",
]

EXPORT_FILE = "export.json"
# Bumped when the exported graph's inputs/outputs or export.json's keys change.
# 2: export.json records the model file's sha256 and size, random weights, the config language.
EXPORT_SCHEMA = 2
# format -> model file name
FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts"}
# ONNX RoiAlign has coordinate_transformation_mode (aligned=True) from opset 16 on.
MIN_OPSET = 16
# Key of the identity in the ONNX model's metadata_props / the TorchScript archive's extra files.
IDENTITY_KEY = "panoptic_ext_export"


class ExportError(ValueError):
    """An export directory or model file that this panoptic_ext cannot run."""


def project_version() -> str:
    from panoptic_ext import __version__

    return __version__


def export_identity(meta: Dict[str, Any]) -> Dict[str, Any]:
    """What the model file itself records, checked against export.json when loading."""
    return {k: meta[k] for k in ("export_schema", "panoptic_ext_version", "format", "opset")}


def read_export_meta(model_dir: str) -> Dict[str, Any]:
    """Read and check ``model_dir/export.json``; raise :class:`ExportError` if it is missing,
    unreadable, or from another panoptic_ext version or export schema."""
    path = os.path.join(model_dir, EXPORT_FILE)
    hint = "export one with tools/export_model.py"
    if not os.path.isdir(model_dir):
        raise ExportError(f"{model_dir} is not a directory of an exported model ({hint})")
    if not os.path.isfile(path):
        raise ExportError(f"{model_dir} is not an exported panoptic_ext model: no {EXPORT_FILE}")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} is not a readable export description: {e}") from e
    if not isinstance(meta, dict) or "export_schema" not in meta:
        raise ExportError(f"{path} was not written by panoptic_ext's exporter ({hint})")
    check_identity(meta, meta, path)
    if meta.get("format") not in FORMATS:
        raise ExportError(f"{path}: unknown format {meta.get('format')!r}; known {list(FORMATS)}")
    return meta


def check_identity(meta: Dict[str, Any], found: Dict[str, Any], where: str) -> None:
    """Raise :class:`ExportError` unless ``found`` (export.json or the model file's record) is
    this panoptic_ext's export schema and version, and agrees with ``meta``."""
    version = project_version()
    if found.get("export_schema") != EXPORT_SCHEMA or found.get("panoptic_ext_version") != version:
        raise ExportError(
            f"{where} was exported by panoptic_ext {found.get('panoptic_ext_version')} (export "
            f"schema {found.get('export_schema')}); this is panoptic_ext {version} (export schema "
            f"{EXPORT_SCHEMA}): export the model again with this version"
        )
    for key in ("format", "opset"):
        if found.get(key) != meta.get(key):
            raise ExportError(
                f"{where} says {key}={found.get(key)!r} but export.json says "
                f"{key}={meta.get(key)!r}: the model file does not belong to this export"
            )
    if meta.get("format") == "onnx" and not (
        isinstance(meta.get("opset"), int) and meta["opset"] >= MIN_OPSET
    ):
        raise ExportError(f"{where}: ONNX opset {meta.get('opset')} < {MIN_OPSET} is unsupported")


def file_digest(path: str) -> Dict[str, Any]:
    """``{"sha256": hex digest, "bytes": size}`` of a file, as export.json records the model's."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"sha256": digest.hexdigest(), "bytes": size}


def check_model_file(model_dir: str, meta: Dict[str, Any]) -> str:
    """
    The path of the model file of the export in ``model_dir``; raise :class:`ExportError` if it
    is missing or is not the file export.json was written with (size and sha256), i.e. the two
    files come from different exports.
    """
    path = os.path.join(model_dir, meta["file"])
    meta_path = os.path.join(model_dir, EXPORT_FILE)
    if not os.path.isfile(path):
        raise ExportError(f"{model_dir}: the model file {meta['file']} is missing")
    recorded = meta.get("model_file")
    if not isinstance(recorded, dict) or not {"sha256", "bytes"} <= set(recorded):
        raise ExportError(f"{meta_path} records no model_file sha256: export the model again")
    size = os.path.getsize(path)
    found = file_digest(path) if size == recorded["bytes"] else {"bytes": size}
    if found != {"sha256": recorded["sha256"], "bytes": recorded["bytes"]}:
        raise ExportError(
            f"{path} ({found['bytes']} bytes, sha256 {found.get('sha256', 'not computed')}) is not "
            f"the model file that {meta_path} describes ({recorded['bytes']} bytes, sha256 "
            f"{recorded['sha256']}): the two come from different exports (an interrupted or "
            "mixed copy?); export the model again"
        )
    return path
