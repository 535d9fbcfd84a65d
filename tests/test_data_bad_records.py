"""Bad and unusual training records: corrupted, truncated or missing files, inconsistent segment
lists, images with only crowd or only void, segments on the border, 1-pixel segments.

Unusual but valid records must train (finite losses, no crash inside the model); bad ones fail
with an error naming the file (DATALOADER.ON_BAD_RECORD "fail") or are skipped with
a warning naming the file ("skip"), in the mapper and in detectron2's train loader.
"""

import io
import itertools
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from PIL import Image

from panoptic_ext.apps.train.resume import prepare_train_loader
from panoptic_ext.compat import map_dataset_can_skip
from panoptic_ext.data import PanopticFPNDatasetMapper, register_panoptic_dataset
from tests.common import write_coco_panoptic
from tests.reliability_common import tiny_cfg, unregister

H, W = 32, 40
CATEGORIES = [
    {"id": 1, "name": "a", "isthing": 1},
    {"id": 2, "name": "b", "isthing": 1},
    {"id": 10, "name": "s1", "isthing": 0},
    {"id": 11, "name": "s2", "isthing": 0},
]
# Semantic labels ("merged"): things 0, s1 1, s2 2, void 255. Instance classes: a 0, b 1.
S1, S2 = 1000, 1100


def _seg(sid, cat, crowd=0):
    return {"id": sid, "category_id": cat, "iscrowd": crowd}


def _samples():
    rng = np.random.default_rng(0)

    def image():
        return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)

    normal = np.full((H, W), S1)
    normal[H // 2 :] = S2
    normal[8:16, 8:16], normal[18:26, 20:30] = 5, 6
    only_crowd = np.full((H, W), 9)
    only_void = np.zeros((H, W), np.int64)
    border = np.full((H, W), S1)
    border[:8, :10], border[10:, W - 6 :], border[H - 4 :, 10:30] = 5, 6, 7
    one_pixel = np.full((H, W), S1)
    one_pixel[5, 5], one_pixel[0, 0], one_pixel[H - 1, W - 1] = 5, 6, S2
    only_stuff = np.full((H, W), S1)
    only_stuff[:, W // 2 :] = S2
    things = [_seg(5, 1), _seg(6, 2), _seg(7, 1)]
    return {
        # valid records
        "normal": (normal, [_seg(S1, 10), _seg(S2, 11), _seg(5, 1), _seg(6, 2)]),
        "only_crowd": (only_crowd, [_seg(9, 1, crowd=1)]),
        "only_void": (only_void, []),
        "border": (border, [_seg(S1, 10)] + things),
        "one_pixel": (one_pixel, [_seg(S1, 10), _seg(S2, 11), _seg(5, 1), _seg(6, 2)]),
        "only_stuff": (only_stuff, [_seg(S1, 10), _seg(S2, 11)]),
        # records made bad below (they start as copies of "normal")
        "corrupt_image": (normal, [_seg(S1, 10), _seg(S2, 11), _seg(5, 1), _seg(6, 2)]),
        "truncated_png_image": (normal, [_seg(S1, 10), _seg(S2, 11), _seg(5, 1), _seg(6, 2)]),
        "truncated_jpeg_image": (normal, [_seg(S1, 10), _seg(S2, 11), _seg(5, 1), _seg(6, 2)]),
        "missing_image": (normal, [_seg(S1, 10), _seg(S2, 11), _seg(5, 1), _seg(6, 2)]),
        "missing_png": (normal, [_seg(S1, 10), _seg(S2, 11), _seg(5, 1), _seg(6, 2)]),
        "truncated_png": (normal, [_seg(S1, 10), _seg(S2, 11), _seg(5, 1), _seg(6, 2)]),
        "empty_segments_nonzero_png": (normal, []),
    }, image


VALID = ["normal", "only_crowd", "only_void", "border", "one_pixel", "only_stuff"]
BAD = {
    # kind: (which file the error must name, text in the error)
    "corrupt_image": ("file_name", "cannot read image"),
    "truncated_png_image": ("file_name", "cannot read image"),
    "truncated_jpeg_image": ("file_name", "cannot read image"),
    "missing_image": ("file_name", "does not exist"),
    "missing_png": ("pan_seg_file_name", "does not exist"),
    "truncated_png": ("pan_seg_file_name", "cannot read panoptic PNG"),
    "empty_segments_nonzero_png": ("pan_seg_file_name", "missing from the record's segments_info"),
}


def _break_files(record, kind):
    image, png = record["file_name"], record["pan_seg_file_name"]
    if kind == "corrupt_image":
        with open(image, "wb") as f:
            f.write(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    elif kind == "truncated_png_image":
        data = open(image, "rb").read()
        open(image, "wb").write(data[: len(data) // 2])
    elif kind == "truncated_jpeg_image":
        buf = io.BytesIO()
        Image.open(image).save(buf, format="JPEG")
        open(image, "wb").write(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "missing_image":
        os.remove(image)
    elif kind == "missing_png":
        os.remove(png)
    elif kind == "truncated_png":
        data = open(png, "rb").read()
        open(png, "wb").write(data[: len(data) // 2])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A registered COCO-panoptic dataset with one record of each kind; kind -> record."""
    root = tmp_path_factory.mktemp("reliability_data")
    samples, image = _samples()
    kinds = list(samples)
    paths = write_coco_panoptic(
        str(root), [(image(), pan, segs) for pan, segs in samples.values()], CATEGORIES
    )
    name = "reliability_bad_records"
    unregister(name)
    register_panoptic_dataset(
        name,
        paths["image_root"],
        paths["panoptic_root"],
        paths["panoptic_json"],
        categories=CATEGORIES,
    )
    records = DatasetCatalog.get(name)
    by_kind = dict(zip(kinds, sorted(records, key=lambda r: r["file_name"])))
    for kind, record in by_kind.items():
        _break_files(record, kind)
    yield name, by_kind
    unregister(name)


def _cfg(name, on_bad_record="fail"):
    cfg = tiny_cfg(train=(name,), num_things=2, num_stuff=2)
    cfg.DATALOADER.ON_BAD_RECORD = on_bad_record
    return cfg


def _plain_mapper(name, on_bad_record="fail"):
    """The mapper without augmentations, for exact targets."""
    args = PanopticFPNDatasetMapper.from_config(_cfg(name, on_bad_record), True)
    args["augmentations"] = []
    return PanopticFPNDatasetMapper(**args)


def test_dataset_records_are_what_the_test_expects(dataset):
    _, by_kind = dataset
    assert by_kind["only_void"]["segments_info"] == []
    assert by_kind["empty_segments_nonzero_png"]["segments_info"] == []
    assert len(by_kind["normal"]["segments_info"]) == 4


def test_unusual_valid_records_give_exact_targets(dataset):
    name, by_kind = dataset
    mapper = _plain_mapper(name)
    out = {kind: mapper(by_kind[kind]) for kind in VALID}
    for kind, o in out.items():
        assert o["image"].shape == (3, H, W), kind
        assert o["sem_seg"].shape == (H, W), kind
        inst = o["instances"]
        assert len(inst.gt_boxes) == len(inst.gt_classes) == len(inst.gt_masks), kind

    assert len(out["only_crowd"]["instances"]) == 0  # crowd: not an instance...
    assert (out["only_crowd"]["sem_seg"] == 0).all()  # ...but 'things' in the semantic map
    assert len(out["only_void"]["instances"]) == 0
    assert (out["only_void"]["sem_seg"] == 255).all()
    assert len(out["only_stuff"]["instances"]) == 0

    border = out["border"]["instances"]
    boxes = sorted(border.gt_boxes.tensor.tolist())
    assert boxes == [[0, 0, 10, 8], [10, H - 4, 30, H], [W - 6, 10, W, H]]

    one = out["one_pixel"]["instances"]
    assert one.gt_masks.tensor.sum(dim=(1, 2)).tolist() == [1, 1]
    assert sorted(one.gt_boxes.tensor.tolist()) == [[0, 0, 1, 1], [5, 5, 6, 6]]
    assert out["one_pixel"]["sem_seg"][H - 1, W - 1] == 2  # 1-pixel stuff segment (s2)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_record_fails_naming_the_file(dataset, kind):
    name, by_kind = dataset
    record = by_kind[kind]
    key, text = BAD[kind]
    with pytest.raises((OSError, ValueError)) as e:
        _plain_mapper(name)(record)
    assert record[key] in str(e.value) and text in str(e.value), str(e.value)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_record_is_skipped_with_a_warning_naming_it(dataset, kind, caplog):
    name, by_kind = dataset
    record = by_kind[kind]
    with caplog.at_level(logging.WARNING, logger="panoptic_ext.data.mapper"):
        assert _plain_mapper(name, "skip")(record) is None
    assert record["file_name"] in caplog.text
    assert record[BAD[kind][0]] in caplog.text


def _train_loader(cfg):
    """The train loader as the project's Trainer builds it."""
    loader = build_detection_train_loader(cfg, mapper=PanopticFPNDatasetMapper(cfg, True))
    return prepare_train_loader(loader)


def test_detectron2_loader_alone_skips_only_where_its_retry_works(dataset):
    # Why prepare_train_loader exists: detectron2 v0.6's MapDataset retries with
    # random.sample(set), a TypeError on Python >= 3.11; detectron2 main samples from a list.
    name, by_kind = dataset
    cfg = _cfg(name, "skip")
    loader = build_detection_train_loader(cfg, mapper=PanopticFPNDatasetMapper(cfg, True))
    if not map_dataset_can_skip():
        with pytest.raises(TypeError, match="Population must be a sequence"):
            list(itertools.islice(loader, 12))
        return
    seen = {d["file_name"] for batch in itertools.islice(loader, 12) for d in batch}
    assert seen <= {by_kind[k]["file_name"] for k in VALID} and len(seen) >= 3


def test_train_loader_skips_bad_records_and_keeps_going(dataset, caplog):
    name, by_kind = dataset
    loader = _train_loader(_cfg(name, "skip"))
    good = {by_kind[k]["file_name"] for k in VALID}
    with caplog.at_level(logging.WARNING):
        batches = list(itertools.islice(loader, 12))
    seen = {d["file_name"] for batch in batches for d in batch}
    assert seen <= good and len(seen) >= 3
    skipped = {k for k in BAD if by_kind[k]["file_name"] in caplog.text}
    assert skipped, "no bad record was drawn in 12 batches"


def test_train_loader_fails_naming_the_bad_record(dataset):
    name, by_kind = dataset
    loader = _train_loader(_cfg(name, "fail"))
    bad_files = {by_kind[k][BAD[k][0]] for k in BAD}
    with pytest.raises((OSError, ValueError)) as e:
        for _ in itertools.islice(loader, 50):
            pass
    assert any(f in str(e.value) for f in bad_files), str(e.value)


@pytest.fixture(scope="module")
def model(dataset):
    name, _ = dataset
    torch.manual_seed(0)
    model = build_model(_cfg(name))
    model.train()
    return model


@pytest.mark.parametrize("kind", VALID + ["all"])
def test_training_step_on_unusual_records(dataset, model, kind):
    """Each unusual record alone (a batch of one, as in one process of a distributed job) and all
    of them together train with finite losses and gradients, with the training augmentations."""
    name, by_kind = dataset
    mapper = PanopticFPNDatasetMapper(_cfg(name), True)
    kinds = VALID if kind == "all" else [kind]
    batch = [mapper(by_kind[k]) for k in kinds]
    model.zero_grad()
    with EventStorage(0):
        losses = model(batch)
    bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v).all()}
    assert not bad, f"non-finite losses on {kind}: {bad}"
    sum(losses.values()).backward()
    for n, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), (kind, n)
