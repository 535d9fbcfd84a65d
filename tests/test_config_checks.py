"""Bad configs are rejected at start-up with messages naming the key, its value and the fix."""

import os
import re

import pytest

import panoptic_ext  # noqa: F401  (registers the synthetic datasets)
from panoptic_ext.apps.train.config_check import (
    ConfigError,
    check_choices,
    check_config,
    check_config_against_datasets,
    merge_config,
)
from panoptic_ext.apps.train.train import main, parse_args
from tests.common import get_model_zoo_cfg


def _synthetic_cfg(**overrides):
    """detectron2's Panoptic FPN config, sized for the synthetic dataset (3 things, 3 stuff)."""
    cfg = get_model_zoo_cfg()
    cfg.DATASETS.TRAIN = ("panoptic_synthetic_train",)
    cfg.DATASETS.TEST = ("panoptic_synthetic_val",)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def test_consistent_config_passes():
    layouts = check_config_against_datasets(_synthetic_cfg())
    assert set(layouts) == {"panoptic_synthetic_train", "panoptic_synthetic_val"}
    check_config(_synthetic_cfg())
    all_mode = _synthetic_cfg(
        **{"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS": "all", "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 6}
    )
    check_config(all_mode)


def test_unknown_key_in_yaml_names_file_key_and_suggestion(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  ROI_HEADS:\n    NUM_CLASSS: 3\n")
    with pytest.raises(ConfigError) as e:
        merge_config(get_model_zoo_cfg(), str(path))
    msg = str(e.value)
    assert str(path) in msg
    assert "unknown config key MODEL.ROI_HEADS.NUM_CLASSS" in msg
    assert "did you mean MODEL.ROI_HEADS.NUM_CLASSES" in msg


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match=r"command line.*MODEL\.ROI_HEAD\.NUM_CLASSES.*ROI_HEADS"):
        merge_config(get_model_zoo_cfg(), opts=["MODEL.ROI_HEAD.NUM_CLASSES", "3"])


@pytest.mark.parametrize(
    "key,value,expected,got",
    [
        ("MODEL.ROI_HEADS.NUM_CLASSES", "abc", "int", "str"),
        ("SOLVER.MAX_ITER", "3.5", "int", "float"),
        ("DATASETS.TRAIN", "panoptic_synthetic_train", "tuple", "str"),
    ],
)
def test_wrong_type_names_key_value_and_type(key, value, expected, got):
    with pytest.raises(ConfigError) as e:
        merge_config(get_model_zoo_cfg(), opts=[key, value])
    msg = str(e.value)
    assert f"{key} = '{value}' has type {got}" in msg
    assert f"takes a{'n' if expected[0] in 'aeiou' else ''} {expected}" in msg


def test_odd_number_of_overrides():
    with pytest.raises(ConfigError, match="value of SOLVER.BASE_LR missing"):
        merge_config(get_model_zoo_cfg(), opts=["SOLVER.MAX_ITER", "3", "SOLVER.BASE_LR"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="nope.yaml"):
        merge_config(get_model_zoo_cfg(), "/nonexistent/nope.yaml")


def test_roi_heads_num_classes_mismatch():
    with pytest.raises(ConfigError) as e:
        check_config_against_datasets(_synthetic_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 80}))
    msg = str(e.value)
    assert "MODEL.ROI_HEADS.NUM_CLASSES = 80" in msg
    assert "'panoptic_synthetic_train' has 3 thing classes (disc, square, triangle)" in msg
    assert "needs MODEL.ROI_HEADS.NUM_CLASSES 3" in msg
    assert "SEM_SEG_HEAD" not in msg
    assert msg.count("NUM_CLASSES = 80") == 1  # train and val have the same classes: one line


def test_sem_seg_num_classes_mismatch_merged():
    with pytest.raises(ConfigError) as e:
        check_config_against_datasets(_synthetic_cfg(**{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 54}))
    msg = str(e.value)
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES = 54" in msg
    assert "SEM_SEG_THINGS = 'merged'" in msg
    assert "needs MODEL.SEM_SEG_HEAD.NUM_CLASSES 4 (3 stuff + 1 'things' class)" in msg


def test_sem_seg_num_classes_mismatch_all_things_mode():
    cfg = _synthetic_cfg(**{"MODEL.PANOPTIC_EXT.SEM_SEG_THINGS": "all"})  # still 4 classes
    with pytest.raises(ConfigError) as e:
        check_config_against_datasets(cfg)
    msg = str(e.value)
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4" in msg
    assert "SEM_SEG_THINGS = 'all'" in msg
    assert "needs MODEL.SEM_SEG_HEAD.NUM_CLASSES 6 (3 thing + 3 stuff classes)" in msg


def test_unregistered_dataset():
    cfg = _synthetic_cfg(**{"DATASETS.TEST": ("panoptic_synthetic_vla",)})
    with pytest.raises(ConfigError, match=r"DATASETS.TEST\[0\] = 'panoptic_synthetic_vla' is not"):
        check_config_against_datasets(cfg)


@pytest.mark.parametrize(
    "key,value,suggestion",
    [
        ("MODEL.PANOPTIC_EXT.SEM_SEG_THINGS", "merge", "merged"),
        ("SOLVER.OPTIMIZER", "adamw", "AdamW"),
        ("DATALOADER.ON_BAD_RECORD", "skipp", "skip"),
        ("MODEL.META_ARCHITECTURE", "PanopticFPNN", "PanopticFPN"),
        ("TEST.EVAL_TASKS", ["panoptic_seg", "semseg"], "sem_seg"),
    ],
)
def test_bad_choice(key, value, suggestion):
    with pytest.raises(ConfigError) as e:
        check_choices(_synthetic_cfg(**{key: value}))
    msg = str(e.value)
    assert f"{key} = {value!r}" in msg and "is not one of" in msg
    assert f"did you mean {suggestion!r}" in msg


def test_registered_plugin_names_are_checked():
    from panoptic_ext import modeling

    for key, registry in (
        ("MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME", "LOSS_WEIGHT_SCHEDULE_REGISTRY"),
        ("MODEL.PANOPTIC_EXT.POSTPROCESS.NAME", "PANOPTIC_POSTPROCESSOR_REGISTRY"),
    ):
        if not hasattr(modeling, registry):
            pytest.skip(f"panoptic_ext.modeling has no {registry} yet")
        with pytest.raises(ConfigError, match=f"{key} = 'no_such_thing' is not one of"):
            check_choices(_synthetic_cfg(**{key: "no_such_thing"}))


QUICK_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.yaml",
)


@pytest.mark.parametrize(
    "opts,text",
    [
        (["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "54"], "needs MODEL.SEM_SEG_HEAD.NUM_CLASSES 4"),
        (["MODEL.ROI_HEADS.NUM_CLASSES", "80"], "needs MODEL.ROI_HEADS.NUM_CLASSES 3"),
        (["MODEL.PANOPTIC_EXT.SEM_SEG_THINGS", "all"], "needs MODEL.SEM_SEG_HEAD.NUM_CLASSES 6"),
        (["SOLVER.MAX_ITERS", "10"], "unknown config key SOLVER.MAX_ITERS; did you mean"),
        (["SOLVER.BASE_LR", "fast"], "SOLVER.BASE_LR = 'fast' has type str"),
    ],
)
def test_train_net_rejects_bad_config_before_anything_runs(tmp_path, opts, text):
    output_dir = tmp_path / "out"
    args = parse_args(["--config-file", QUICK_CONFIG] + opts + ["OUTPUT_DIR", str(output_dir)])
    with pytest.raises(ConfigError, match=re.escape(text)):
        main(args)
    assert not output_dir.exists()  # no log, no config backup, no model, no checkpoint
