"""Python configs (LazyConfig): every one loads and builds its model; each builds the same model,
optimizer, LR schedule, data settings and run options as its YAML twin; bad overrides fail
naming the key."""

import glob
import os
import warnings

import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.solver import LRMultiplier, build_lr_scheduler
from omegaconf import ListConfig

from panoptic_ext.apps.train import build_optimizer, get_panoptic_cfg
from panoptic_ext.apps.train.config_check import ConfigError
from panoptic_ext.apps.train.lazy_config import load_lazy_config
from panoptic_ext.data import PanopticFPNDatasetMapper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY_CONFIGS = sorted(
    p
    for p in glob.glob(os.path.join(ROOT, "configs/**/*.py"), recursive=True)
    if "/common/" not in p
)
PAIRS = [p for p in PY_CONFIGS if os.path.isfile(p[:-3] + ".yaml")]
QUICK = os.path.join(ROOT, "configs/quick_schedules/panoptic_fpn_R_18_synthetic_instant_test.py")


def test_every_recipe_has_a_python_twin():
    names = [os.path.relpath(p, ROOT) for p in PAIRS]
    assert len(PAIRS) == len(PY_CONFIGS) == 6, names
    assert all(
        n.startswith(("configs/COCO", "configs/City", "configs/Synth", "configs/quick"))
        for n in names
    )


@pytest.mark.parametrize("path", PY_CONFIGS, ids=os.path.basename)
def test_python_config_loads_and_builds_its_model(path):
    cfg = load_lazy_config(path)
    assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg)
    model = instantiate(cfg.model)
    assert type(model).__name__ == "PanopticFPNExt"
    assert sum(p.numel() for p in model.parameters()) > 0


_SCALARS = (bool, int, float, str, type(None))


def _plain(v):
    """Scalars, and lists of them as tuples; anything else (modules, tensors) as None."""
    if isinstance(v, (list, tuple, ListConfig)):
        items = tuple(_plain(x) for x in v)
        return items if all(isinstance(x, _SCALARS + (tuple,)) for x in items) else None
    return v if isinstance(v, _SCALARS) else None


def _hyperparameters(model):
    """Every module's type and scalar / list attributes, and those of the schedule and
    post-processor: what the configs set besides the weights."""
    out = {}
    for name, module in model.named_modules():
        out[f"{name}.<type>"] = type(module).__name__
        for key, value in vars(module).items():
            value = _plain(value)
            if key.startswith("_") or key == "training":
                continue
            if value is not None:
                out[f"{name}.{key}"] = (type(value).__name__, value)
    for attr in ("loss_weight_schedule", "postprocessor"):
        for key, value in vars(getattr(model, attr)).items():
            out[f"{attr}.{key}"] = _plain(value)
    return out


def _groups(optimizer):
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups], [
        len(g["params"]) for g in optimizer.param_groups
    ]


def _lr_at(scheduler, iterations):
    values = []
    for i in iterations:
        scheduler.last_epoch = i
        with warnings.catch_warnings():  # torch: "use get_last_lr()"
            warnings.simplefilter("ignore")
            values.append(scheduler.get_lr()[0])
    return values


def _described(augmentations):
    return [(type(a).__name__, {k: _plain(v) for k, v in vars(a).items()}) for a in augmentations]


def _train_augmentations(cfg):
    augs = detection_utils.build_augmentation(cfg, True)
    if cfg.INPUT.CROP.ENABLED:  # as PanopticFPNDatasetMapper.from_config
        augs.insert(1, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    return augs


@pytest.mark.parametrize("path", PAIRS, ids=os.path.basename)
def test_python_config_equals_its_yaml_twin(path):
    yaml_cfg = get_panoptic_cfg(path[:-3] + ".yaml", ["MODEL.DEVICE", "cpu"])
    lazy = load_lazy_config(path)

    torch.manual_seed(0)
    ours = build_model(yaml_cfg)
    torch.manual_seed(0)
    theirs = instantiate(lazy.model)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in a:  # same shapes, and the same initialisation from the same seed
        assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key
    assert _hyperparameters(ours) == _hyperparameters(theirs)

    # optimizer and LR schedule
    optimizer = build_optimizer(yaml_cfg, ours)
    lazy.optimizer.params.model = theirs
    lazy_optimizer = instantiate(lazy.optimizer)
    assert type(optimizer).__name__ == type(lazy_optimizer).__name__
    assert _groups(optimizer) == _groups(lazy_optimizer)
    max_iter = yaml_cfg.SOLVER.MAX_ITER
    assert lazy.train.max_iter == max_iter
    points = sorted(
        {0, 1, 10, 49, 50, 999, 1000, max_iter // 3}
        | set(yaml_cfg.SOLVER.STEPS)
        | {s - 1 for s in yaml_cfg.SOLVER.STEPS}
        | {max_iter - 1}
    )
    scheduler = build_lr_scheduler(yaml_cfg, optimizer)
    lazy_scheduler = LRMultiplier(lazy_optimizer, instantiate(lazy.lr_multiplier), max_iter)
    assert _lr_at(scheduler, points) == _lr_at(lazy_scheduler, points)

    # data
    train, test = lazy.dataloader.train, lazy.dataloader.test
    assert (train.dataset.names,) == tuple(yaml_cfg.DATASETS.TRAIN)
    assert (test.dataset.names,) == tuple(yaml_cfg.DATASETS.TEST)
    assert train.dataset.filter_empty == yaml_cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    assert train.total_batch_size == yaml_cfg.SOLVER.IMS_PER_BATCH
    assert train.num_workers == test.num_workers == yaml_cfg.DATALOADER.NUM_WORKERS
    lazy_train_augs = instantiate(train.mapper.augmentations)
    assert _described(lazy_train_augs) == _described(_train_augmentations(yaml_cfg))
    test_augs = PanopticFPNDatasetMapper.from_config(yaml_cfg, False)["augmentations"]
    assert _described(instantiate(test.mapper.augmentations)) == _described(test_augs)
    assert train.mapper.image_format == test.mapper.image_format == yaml_cfg.INPUT.FORMAT
    assert train.mapper.recompute_boxes == yaml_cfg.INPUT.CROP.ENABLED
    assert train.mapper.on_bad_record == yaml_cfg.DATALOADER.ON_BAD_RECORD
    assert list(lazy.dataloader.evaluator.tasks) == list(yaml_cfg.TEST.EVAL_TASKS)
    assert lazy.dataloader.evaluator.save_pngs == yaml_cfg.TEST.SAVE_PANOPTIC_PNGS

    # run options
    run = lazy.train
    assert run.init_checkpoint == yaml_cfg.MODEL.WEIGHTS
    assert os.path.normpath(run.output_dir) == os.path.normpath(yaml_cfg.OUTPUT_DIR)
    assert run.eval_period == yaml_cfg.TEST.EVAL_PERIOD
    assert run.checkpointer.period == yaml_cfg.SOLVER.CHECKPOINT_PERIOD
    assert run.checkpointer.max_to_keep == yaml_cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP
    assert run.seed == yaml_cfg.SEED and run.amp.enabled == yaml_cfg.SOLVER.AMP.ENABLED
    assert run.existing_output == yaml_cfg.RUN.EXISTING_OUTPUT
    assert run.allow_partial_weights == yaml_cfg.RUN.ALLOW_PARTIAL_WEIGHTS
    assert run.download_timeout == yaml_cfg.RUN.WEIGHTS_DOWNLOAD_TIMEOUT
    assert run.cpu_speedups == yaml_cfg.TEST.CPU_SPEEDUPS
    if path.endswith("_cpu.py") or "quick" in path:
        assert run.device == yaml_cfg.MODEL.DEVICE == "cpu"


def test_override_applies():
    cfg = load_lazy_config(
        QUICK, ["train.max_iter=7", "optimizer.lr=1", "model.sem_seg_head.loss_on=downsampled"]
    )
    assert (
        cfg.train.max_iter == 7 and cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)
    )
    assert instantiate(cfg.model.sem_seg_head).loss_on == "downsampled"


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "model.sem_seg_head.loss_weigt=1",
            ["model.sem_seg_head.loss_weigt", "SemanticFPNHead", "loss_weight"],
        ),
        ("train.max_iterr=5", ["train.max_iterr", "train.max_iter"]),
        ("modle.roi_heads.num_classes=3", ["modle", "model"]),
        ("train.max_iter=abc", ["train.max_iter", "expects int", "str"]),
        ("train.amp.enabled=1", ["train.amp.enabled", "expects bool", "int"]),
        ("optimizer.lr=fast", ["optimizer.lr", "expects float"]),
        ("train.max_iter", ["not key=value"]),
    ],
)
def test_bad_override_names_the_key(override, expected):
    with pytest.raises(ConfigError) as e:
        load_lazy_config(QUICK, [override])
    for text in expected:
        assert text in str(e.value), str(e.value)


def test_typo_in_a_config_file_names_the_key(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(
        "from detectron2.config import LazyConfig\n"
        f"model, dataloader, optimizer, lr_multiplier, train = LazyConfig.load({QUICK!r}, "
        "('model', 'dataloader', 'optimizer', 'lr_multiplier', 'train'))\n"
        "model.postprocessor.overlap_treshold = 0.3\n"
    )
    with pytest.raises(
        ConfigError, match=r"model\.postprocessor\.overlap_treshold.*overlap_threshold"
    ):
        load_lazy_config(str(path))
