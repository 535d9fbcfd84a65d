"""Bad configs are rejected at start-up with messages naming the key (in the config's own
language), its value and the fix: unknown keys, wrong types, bad choices, values out of range
and class counts that do not fit the datasets."""

import os
import re

import pytest
from detectron2.data import MetadataCatalog

import panoptic_ext  # noqa: F401  (registers the synthetic datasets)
from panoptic_ext.apps.train.config_check import (
    RANGE_RULES,
    ConfigError,
    check_choices,
    check_config,
    check_config_against_datasets,
    check_ranges,
    merge_config,
    range_problem,
)
from panoptic_ext.apps.train.train import main, parse_args
from panoptic_ext.data.class_counts import (
    LAZY_CLASS_COUNT_KEYS,
    check_class_counts,
    class_count_problems,
)
from panoptic_ext.data.class_layout import PanopticClassLayout
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


@pytest.mark.parametrize(
    "key,value,text",
    [
        ("SOLVER.MAX_ITER", "-5", "SOLVER.MAX_ITER = -5: must be > 0"),
        ("SOLVER.MAX_ITER", "0", "SOLVER.MAX_ITER = 0: must be > 0"),
        ("SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD = 0: must be > 0"),
        ("SOLVER.IMS_PER_BATCH", "0", "SOLVER.IMS_PER_BATCH = 0: must be > 0"),
        ("SOLVER.BASE_LR", "-0.1", "SOLVER.BASE_LR = -0.1: must be > 0"),
        ("TEST.EVAL_PERIOD", "-1", "TEST.EVAL_PERIOD = -1: must be >= 0"),
        ("SOLVER.BETAS", "(0.9,1.5)", "SOLVER.BETAS = (0.9, 1.5): every value must be in [0, 1)"),
        ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.5", "must be in [0, 1]"),
    ],
)
def test_train_net_rejects_out_of_range_values_before_anything_runs(tmp_path, key, value, text):
    output_dir = tmp_path / "out"
    args = parse_args(["--config-file", QUICK_CONFIG, key, value, "OUTPUT_DIR", str(output_dir)])
    with pytest.raises(ConfigError, match=re.escape(text)):
        main(args)
    assert not output_dir.exists()


def test_range_rules_speak_both_config_languages():
    # one table: the same rule, named as the user's config names it
    assert range_problem("SOLVER.MAX_ITER", 10) is None
    assert range_problem("train.max_iter", -5) == (
        "train.max_iter = -5: must be > 0 (the iterations to train)"
    )
    assert "train.log_period = 0: must be > 0" in range_problem("train.log_period", 0)
    assert "train.checkpointer.period = 0" in range_problem("train.checkpointer.period", 0)
    with pytest.raises(ConfigError) as e:
        check_ranges({"train.max_iter": 0, "optimizer.lr": -1.0, "train.eval_period": None})
    assert "train.max_iter = 0" in str(e.value) and "optimizer.lr = -1.0" in str(e.value)
    assert {r.lazy_key for r in RANGE_RULES if r.yaml_key == "SOLVER.CHECKPOINT_PERIOD"} == {
        "train.checkpointer.period"
    }


def test_class_count_check_speaks_the_config_language():
    layout = PanopticClassLayout.from_metadata(MetadataCatalog.get("panoptic_synthetic_train"))
    (lazy,) = class_count_problems(layout, "panoptic_synthetic_train", 80, 4, LAZY_CLASS_COUNT_KEYS)
    assert lazy.startswith("model.roi_heads.num_classes = 80, but dataset")
    assert lazy.endswith("it needs model.roi_heads.num_classes=3")
    with pytest.raises(ValueError) as e:  # what the mapper raises, in YAML keys
        check_class_counts(layout, "panoptic_synthetic_train", 80, 5)
    msg = str(e.value)
    assert "MODEL.ROI_HEADS.NUM_CLASSES = 80" in msg and "MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5" in msg
    assert msg.endswith(
        "the config needs: MODEL.ROI_HEADS.NUM_CLASSES 3 MODEL.SEM_SEG_HEAD.NUM_CLASSES 4"
    )
    assert class_count_problems(layout, "panoptic_synthetic_train", None, 4) == []  # no ROI heads


def test_python_config_given_to_a_yaml_command_says_so(tmp_path):
    python_config = QUICK_CONFIG[: -len(".yaml")] + ".py"
    with pytest.raises(ConfigError) as e:
        merge_config(get_model_zoo_cfg(), python_config)
    msg = str(e.value)
    assert f"config file {python_config} is a Python config (LazyConfig)" in msg
    assert f"its YAML twin: {QUICK_CONFIG}" in msg
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL: [unclosed\n")
    with pytest.raises(
        ConfigError, match=f"config file {re.escape(str(broken))} is not valid YAML"
    ):
        merge_config(get_model_zoo_cfg(), str(broken))
