"""PanopticFPNDatasetMapper and panoptic_targets on hand-made tiny records (exact values)."""

import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from PIL import Image
from pycocotools import mask as mask_util

from panoptic_ext.data import (
    PanopticClassLayout,
    PanopticFPNDatasetMapper,
    id_to_rgb,
    metadata_from_categories,
    panoptic_targets,
    rgb_to_id,
)

CATEGORIES = [
    {"id": 1, "name": "a", "isthing": 1},
    {"id": 2, "name": "b", "isthing": 1},
    {"id": 10, "name": "s1", "isthing": 0},
    {"id": 11, "name": "s2", "isthing": 0},
]
# record (contiguous) ids: a 0, b 1, s1 2, s2 3. Segment ids use all three PNG channels.
S1, S2, A, B, CROWD = 300, 70000, 5, 7, 9
PAN = np.array(
    [
        [S1, S1, S1, S1, S2, S2, S2, S2],
        [S1, A, A, S1, S2, S2, 0, 0],
        [S1, A, A, S1, S2, B, B, 0],
        [S1, S1, S1, S1, S2, B, B, S2],
        [CROWD, CROWD, S1, S1, S2, S2, S2, S2],
        [CROWD, CROWD, S1, S1, S2, S2, S2, S2],
    ]
)
SEGMENTS = [
    {"id": A, "category_id": 0, "iscrowd": 0},
    {"id": B, "category_id": 1, "iscrowd": 0},
    {"id": CROWD, "category_id": 0, "iscrowd": 1},
    {"id": S1, "category_id": 2, "iscrowd": 0},
    {"id": S2, "category_id": 3, "iscrowd": 0},
]
SEM_LABEL = {
    "merged": {A: 0, B: 0, CROWD: 0, S1: 1, S2: 2, 0: 255},
    "all": {A: 0, B: 1, CROWD: 0, S1: 2, S2: 3, 0: 255},
}
BOXES = [[1, 1, 3, 3], [5, 2, 7, 4]]


def _layout(mode="merged"):
    return PanopticClassLayout.from_metadata(
        SimpleNamespace(**metadata_from_categories(CATEGORIES)), mode
    )


def _expected_sem(pan, mode):
    return np.vectorize(SEM_LABEL[mode].get)(pan)


@pytest.fixture
def record(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, PAN.shape + (3,), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(id_to_rgb(PAN)).save(tmp_path / "pan.png")
    return {
        "file_name": str(tmp_path / "img.png"),
        "image_id": 1,
        "height": 6,
        "width": 8,
        "pan_seg_file_name": str(tmp_path / "pan.png"),
        "segments_info": [dict(s) for s in SEGMENTS],
        "_image": image,
    }


def _mapper(augs=(), mode="merged", **kwargs):
    return PanopticFPNDatasetMapper(
        True, augmentations=list(augs), image_format="RGB", layout=_layout(mode), **kwargs
    )


def test_rgb_id_roundtrip():
    assert np.array_equal(rgb_to_id(id_to_rgb(PAN)), PAN)
    assert id_to_rgb(np.array([[70000]]))[0, 0].tolist() == [112, 17, 1]


@pytest.mark.parametrize("mode", ["merged", "all"])
def test_pure_targets(mode):
    t = panoptic_targets(PAN, SEGMENTS, _layout(mode))
    assert np.array_equal(t.sem_seg, _expected_sem(PAN, mode))
    assert t.gt_classes.tolist() == [0, 1]  # the crowd segment is not an instance
    assert t.gt_boxes.tolist() == BOXES
    assert np.array_equal(t.gt_masks[0], PAN == A) and np.array_equal(t.gt_masks[1], PAN == B)


@pytest.mark.parametrize("mode", ["merged", "all"])
def test_mapper_exact(record, mode):
    out = _mapper(mode=mode)(record)
    assert torch.equal(out["image"], torch.from_numpy(record["_image"]).permute(2, 0, 1))
    assert out["sem_seg"].dtype == torch.int64
    assert np.array_equal(out["sem_seg"].numpy(), _expected_sem(PAN, mode))
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [0, 1]
    assert inst.gt_boxes.tensor.tolist() == BOXES
    assert np.array_equal(inst.gt_masks.tensor.numpy(), np.stack([PAN == A, PAN == B]))
    assert (out["height"], out["width"]) == (6, 8)


def test_mapper_hflip(record):
    out = _mapper([T.HFlipTransform(8)])(record)
    flipped = PAN[:, ::-1]
    assert torch.equal(
        out["image"], torch.from_numpy(record["_image"][:, ::-1].copy()).permute(2, 0, 1)
    )
    assert np.array_equal(out["sem_seg"].numpy(), _expected_sem(flipped, "merged"))
    assert out["instances"].gt_boxes.tensor.tolist() == [[5, 1, 7, 3], [1, 2, 3, 4]]
    masks = out["instances"].gt_masks.tensor.numpy()
    assert np.array_equal(masks, np.stack([flipped == A, flipped == B]))


def test_mapper_resize_and_crop(record):
    out = _mapper([T.ResizeTransform(6, 8, 12, 16)])(record)
    big = np.kron(PAN, np.ones((2, 2), dtype=PAN.dtype))
    assert out["image"].shape == (3, 12, 16)
    assert np.array_equal(out["sem_seg"].numpy(), _expected_sem(big, "merged"))
    assert out["instances"].gt_boxes.tensor.tolist() == [[2 * v for v in b] for b in BOXES]
    # a crop that removes thing A keeps only B, in crop coordinates
    out = _mapper([T.CropTransform(4, 0, 4, 6)], mode="all")(record)
    assert np.array_equal(out["sem_seg"].numpy(), _expected_sem(PAN[:, 4:], "all"))
    assert out["instances"].gt_classes.tolist() == [1]
    assert out["instances"].gt_boxes.tensor.tolist() == [[1, 2, 3, 4]]


def test_many_segments_survive_resize(tmp_path):
    """More than 255 segments: the index map is not uint8 and must stay exact."""
    pan = 1000 + np.arange(20 * 16).reshape(20, 16)  # 320 one-pixel things
    segments = [{"id": int(i), "category_id": int(i % 2), "iscrowd": 0} for i in pan.ravel()]
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(id_to_rgb(pan)).save(tmp_path / "pan.png")
    rec = {"file_name": str(tmp_path / "img.png"), "pan_seg_file_name": str(tmp_path / "pan.png")}
    rec["segments_info"] = segments
    out = _mapper([T.ResizeTransform(20, 16, 40, 32)], mode="all")(rec)
    big = np.kron(pan, np.ones((2, 2), dtype=pan.dtype))
    assert np.array_equal(out["sem_seg"].numpy(), big % 2)
    assert len(out["instances"]) == 320
    assert np.array_equal(out["instances"].gt_masks.tensor[7].numpy(), big == 1007)


def test_random_augmentations_keep_image_and_targets_aligned(tmp_path):
    """Image colors encode the segments: after random resize/crop/flip, masks still match."""
    rng = np.random.default_rng(1)
    pan = np.full((60, 90), S1)
    pan[:, 45:] = S2
    pan[10:30, 10:40], pan[35:55, 50:80] = A, B
    colors = {S1: (0, 0, 255), S2: (0, 255, 0), A: (255, 0, 0), B: (255, 255, 0)}
    image = np.zeros((60, 90, 3), np.uint8)
    for sid, c in colors.items():
        image[pan == sid] = c
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(id_to_rgb(pan)).save(tmp_path / "pan.png")
    rec = {"file_name": str(tmp_path / "img.png"), "pan_seg_file_name": str(tmp_path / "pan.png")}
    rec["segments_info"] = [s for s in SEGMENTS if s["id"] != CROWD]
    augs = [
        T.ResizeShortestEdge((40, 60, 90, 120), 1000, "choice"),
        T.RandomCrop("absolute", (48, 64)),
        T.RandomFlip(),
    ]
    mapper = _mapper(augs)
    for _ in range(10):
        np.random.seed(int(rng.integers(1 << 30)))
        out = mapper(rec)
        img = out["image"].permute(1, 2, 0).numpy().astype(int)
        for k, mask in enumerate(out["instances"].gt_masks.tensor.numpy()):
            cls = out["instances"].gt_classes[k].item()
            inner = mask & np.roll(mask, 2, 0) & np.roll(mask, -2, 0)
            inner &= np.roll(mask, 2, 1) & np.roll(mask, -2, 1)
            if inner.any():
                assert (np.abs(img[inner] - colors[[A, B][cls]]) <= 2).all()
        sem = out["sem_seg"].numpy()
        assert img.shape[:2] == sem.shape
        assert (np.abs(img[sem == 1] - colors[S1]) <= 128).all()  # at least blended with S1


def test_separated_records(tmp_path, record):
    """Detectron2's "separated" records: instance annotations + merged semantic PNG."""
    merged = _expected_sem(PAN, "merged").astype(np.uint8)
    Image.fromarray(merged).save(tmp_path / "sem.png")

    def anno(sid, cat, crowd):
        rle = mask_util.encode(np.asfortranarray((PAN == sid).astype(np.uint8)))
        return {"bbox": [0, 0, 1, 1], "bbox_mode": 1, "category_id": cat, "iscrowd": crowd,
                "segmentation": rle}  # fmt: skip

    rec = {k: record[k] for k in ("file_name", "image_id", "height", "width")}
    rec["sem_seg_file_name"] = str(tmp_path / "sem.png")
    rec["annotations"] = [anno(A, 0, 0), anno(B, 1, 0), anno(CROWD, 0, 1)]
    out = _mapper(mode="merged", recompute_boxes=True)(rec)
    assert np.array_equal(out["sem_seg"].numpy(), merged)
    assert out["instances"].gt_classes.tolist() == [0, 1]
    assert out["instances"].gt_boxes.tensor.tolist() == BOXES
    out = _mapper(mode="all")(rec)
    assert np.array_equal(out["sem_seg"].numpy(), _expected_sem(PAN, "all"))
    assert np.array_equal(out["instances"].gt_masks.tensor.numpy(), np.stack([PAN == A, PAN == B]))


def test_inference_output(record):
    mapper = PanopticFPNDatasetMapper(False, augmentations=[], image_format="BGR")
    out = mapper(record)
    bgr = torch.from_numpy(record["_image"][..., ::-1].copy()).permute(2, 0, 1)
    assert torch.equal(out["image"], bgr) and out["image_id"] == 1
    assert "instances" not in out and "sem_seg" not in out
    resize = [T.ResizeTransform(6, 8, 12, 16)]
    out = PanopticFPNDatasetMapper(False, augmentations=resize, image_format="BGR")(record)
    assert out["image"].shape == (3, 12, 16) and (out["height"], out["width"]) == (6, 8)
    # inference never skips a bad record: evaluation must not silently drop images
    os.remove(record["file_name"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PanopticFPNDatasetMapper(False, augmentations=[], on_bad_record="skip")(record)


def _corrupt(record, tmp_path, what):
    if what == "id_missing":
        record["segments_info"] = [s for s in record["segments_info"] if s["id"] != B]
        return record["pan_seg_file_name"], ValueError, "missing from the record's segments_info"
    if what == "size":
        Image.fromarray(id_to_rgb(PAN[:5])).save(record["pan_seg_file_name"])
        return record["pan_seg_file_name"], ValueError, record["file_name"]
    if what == "no_png":
        os.remove(record["pan_seg_file_name"])
        return record["pan_seg_file_name"], FileNotFoundError, "does not exist"
    if what == "bad_image":
        with open(record["file_name"], "wb") as f:
            f.write(b"not an image")
        return record["file_name"], OSError, "cannot read image"
    if what == "unknown_category":
        record["segments_info"][0]["category_id"] = 42
        return record["pan_seg_file_name"], ValueError, "category id 42"
    if what == "isthing_mismatch":
        record["segments_info"][3]["isthing"] = True
        return record["pan_seg_file_name"], ValueError, "isthing"
    raise AssertionError(what)


BAD = ["id_missing", "size", "no_png", "bad_image", "unknown_category", "isthing_mismatch"]


@pytest.mark.parametrize("what", BAD)
def test_bad_record_fails_naming_the_file(record, tmp_path, what):
    path, error, text = _corrupt(record, tmp_path, what)
    with pytest.raises(error) as e:
        _mapper()(record)
    assert path in str(e.value) and text in str(e.value)


@pytest.mark.parametrize("what", ["id_missing", "no_png", "bad_image"])
def test_bad_record_skip(record, tmp_path, what, caplog):
    path, _, _ = _corrupt(record, tmp_path, what)
    with caplog.at_level(logging.WARNING, logger="panoptic_ext.data.mapper"):
        assert _mapper(on_bad_record="skip")(record) is None
    assert path in caplog.text or record["file_name"] in caplog.text


def test_bad_choice_and_missing_layout():
    with pytest.raises(ValueError, match="ON_BAD_RECORD"):
        _mapper(on_bad_record="ignore")
    with pytest.raises(ValueError, match="layout"):
        PanopticFPNDatasetMapper(True, augmentations=[], image_format="RGB")
