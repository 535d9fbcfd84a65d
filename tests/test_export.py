"""Export (ONNX Runtime, TorchScript) of a tiny model end to end: the exported model and its
host-side fusion give the eager model's panoptic outputs; bad input fails clearly."""

import hashlib
import json
import logging
import os
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from panoptic_ext.apps.export import (
    ExportedPanopticModel,
    ExportError,
    PanopticONNXPredictor,
    export_model,
)
from panoptic_ext.apps.export.commands import evaluate_main, export_main
from panoptic_ext.apps.predict.predictor import PanopticPredictor
from tests.reliability_common import register_tiny_synthetic, tiny_cfg, unregister

pytest.importorskip("onnxruntime")

PREFIX = "export_tiny"
SIZES = [(200, 250), (200, 249)]


def _cfg(root, **overrides):
    cfg = tiny_cfg(test=(f"{PREFIX}_val",), output_dir=str(root))
    cfg.INPUT.MAX_SIZE_TEST = 256
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.2  # random weights
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 64
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    register_tiny_synthetic(str(root), PREFIX)
    torch.manual_seed(0)
    cfg = _cfg(root)
    DetectionCheckpointer(build_model(cfg), save_dir=str(root)).save("tiny")
    cfg.MODEL.WEIGHTS = str(root / "tiny.pth")
    eager = build_model(cfg).eval()
    DetectionCheckpointer(eager).load(cfg.MODEL.WEIGHTS)
    export_model(cfg, str(root / "onnx"), "onnx")
    yield cfg, eager, root
    unregister(f"{PREFIX}_train", f"{PREFIX}_val")


def _image(size, seed):
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (3, size[0] // 8 + 1, size[1] // 8 + 1), generator=g)
    big = small.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, : size[0], : size[1]]
    return big.float()


def assert_same_panoptic(expected, actual, min_agreement=0.999):
    (seg_e, info_e), (seg_a, info_a) = expected["panoptic_seg"], actual["panoptic_seg"]
    assert seg_e.shape == seg_a.shape
    assert (seg_e == seg_a).float().mean().item() >= min_agreement
    cats = sorted((s["isthing"], s["category_id"]) for s in info_e)
    assert cats == sorted((s["isthing"], s["category_id"]) for s in info_a)


def _compare(model, eager, seeds=(1, 2)):
    checked = 0
    for seed in seeds:
        for size in SIZES:
            inputs = [{"image": _image(size, seed), "height": size[0], "width": size[1]}]
            with torch.no_grad():
                expected = eager(inputs)[0]
            actual = model(inputs)[0]
            assert actual["panoptic_seg"][0].shape == size
            assert_same_panoptic(expected, actual)
            assert set(actual) == set(expected)
            if "instances" in expected:
                assert len(actual["instances"]) == len(expected["instances"]) > 0
            checked += sum(s["isthing"] for s in actual["panoptic_seg"][1])
    assert checked > 0  # things were fused, not only stuff


def test_onnx_export_equals_eager_on_odd_sizes(setup):
    cfg, eager, root = setup
    meta = json.load(open(root / "onnx" / "export.json"))
    assert meta["opset"] >= 16 and meta["input"]["max_size"] == 256
    assert meta["classes"]["thing_classes"] == ["disc", "square", "triangle"]
    model = ExportedPanopticModel(str(root / "onnx"), ["CPUExecutionProvider"], num_threads=1)
    _compare(model, eager)


def test_torchscript_export_equals_eager_on_other_images(setup, tmp_path):
    cfg, _, _ = setup
    cfg = cfg.clone()
    cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES = False  # masks of visited only
    eager = build_model(cfg).eval()
    DetectionCheckpointer(eager).load(cfg.MODEL.WEIGHTS)
    export_model(cfg, str(tmp_path), "torchscript")
    _compare(ExportedPanopticModel(str(tmp_path)), eager, seeds=(3,))


def test_onnx_predictor_equals_eager_predictor(setup):
    cfg, _, root = setup
    image = _image((150, 211), 4).permute(1, 2, 0).numpy().astype(np.uint8)
    expected = PanopticPredictor(cfg)(image)
    actual = PanopticONNXPredictor(str(root / "onnx"))(image)
    assert_same_panoptic(expected, actual)
    assert set(actual) == set(expected)


def test_image_with_no_detections(setup, tmp_path):
    cfg, _, root = setup
    cfg = cfg.clone()
    cfg.MODEL.PANOPTIC_EXT.POSTPROCESS.RETURN_INSTANCES = False
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 1.01  # no detection at all
    eager = build_model(cfg).eval()
    DetectionCheckpointer(eager).load(cfg.MODEL.WEIGHTS)
    export_model(cfg, str(tmp_path), "onnx")
    model = ExportedPanopticModel(str(tmp_path))
    size = SIZES[1]
    inputs = [{"image": _image(size, 5), "height": size[0], "width": size[1]}]
    assert len(model.run_network(inputs[0]["image"])["boxes"]) == 0
    with torch.no_grad():
        expected = eager(inputs)[0]
    actual = model(inputs)[0]
    assert_same_panoptic(expected, actual)
    assert actual["panoptic_seg"][1] and not any(s["isthing"] for s in actual["panoptic_seg"][1])


def test_cli_demo_and_evaluation_of_an_export(setup, tmp_path):
    cfg, eager, root = setup
    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.dump())
    out = tmp_path / "ts"
    export_main(["--config-file", str(config), "--format", "torchscript", "--output", str(out)])
    assert sorted(os.listdir(out)) == ["config.yaml", "export.json", "model.ts"]
    argv = ["--model-dir", str(out), "--output", str(tmp_path / "ev"), "--compare-eager"]
    results = evaluate_main(argv)[f"{PREFIX}_val"]
    assert results["agreement"]["images"] == 2 and results["agreement"]["min"] >= 0.999
    pq = results["export"]["panoptic_seg"]["PQ"]
    assert pq == pytest.approx(results["eager"]["panoptic_seg"]["PQ"], abs=0.1)
    plain = evaluate_main(["--model-dir", str(out), "--output", str(tmp_path / "ev2")])
    assert plain["panoptic_seg"]["PQ"] == pq

    from PIL import Image

    Image.fromarray(_image((90, 70), 6).permute(1, 2, 0).numpy().astype(np.uint8)).save(
        tmp_path / "a.png"
    )
    sys.argv = ["demo.py"]
    import runpy

    saved = sys.argv
    sys.argv = ["demo.py", "--onnx", str(root / "onnx"), "--input", str(tmp_path / "a.png")]
    sys.argv += ["--output", str(tmp_path / "demo")]
    try:
        runpy.run_path(
            os.path.join(os.path.dirname(__file__), "..", "demo", "demo.py"), run_name="__main__"
        )
    finally:
        sys.argv = saved
    assert os.path.isfile(tmp_path / "demo" / "a_segments.json")


def test_clear_errors(setup, tmp_path, monkeypatch):
    cfg, _, root = setup
    bad = cfg.clone()
    bad.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    bad.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NAME.*CascadeROIHeads"):
        export_model(bad, str(tmp_path / "x"))
    bad = cfg.clone()
    bad.MODEL.META_ARCHITECTURE = "PanopticFPN"
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE.*PanopticFPN"):
        export_model(bad, str(tmp_path / "x"))

    with pytest.raises(ExportError, match="no export.json"):
        ExportedPanopticModel(str(tmp_path))
    fake = tmp_path / "fake"
    fake.mkdir()
    meta = json.load(open(root / "onnx" / "export.json"))
    (fake / "export.json").write_text(json.dumps(meta))
    (fake / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not the model file"):
        ExportedPanopticModel(str(fake))
    digest = {"sha256": hashlib.sha256(b"not a model").hexdigest(), "bytes": 11}
    (fake / "export.json").write_text(json.dumps({**meta, "model_file": digest}))
    with pytest.raises(ExportError, match="not an ONNX model"):
        ExportedPanopticModel(str(fake))
    (fake / "model.onnx").write_bytes((root / "onnx" / "model.onnx").read_bytes())
    for key, value, message in [
        ("panoptic_ext_version", "0.0.1", "exported by panoptic_ext 0.0.1"),
        ("opset", 18, "opset=17 but export.json says opset=18"),
    ]:
        (fake / "export.json").write_text(json.dumps({**meta, key: value}))
        with pytest.raises(ExportError, match=message):
            ExportedPanopticModel(str(fake))

    model = ExportedPanopticModel(str(root / "onnx"))
    with pytest.raises(ValueError, match="257x40 pixels.*from 1 to 256"):
        model([{"image": torch.zeros(3, 257, 40)}])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        ExportedPanopticModel(str(root / "onnx"))


def _export_with_digest_failure(cfg, output_dir, monkeypatch):
    """An export interrupted after the model file was written, before export.json."""
    import panoptic_ext.apps.export.exporter as exporter

    def interrupted(path):
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(exporter, "file_digest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(cfg, output_dir, "onnx")
    monkeypatch.undo()


def test_interrupted_reexport_keeps_the_earlier_export_whole(setup, tmp_path, monkeypatch):
    cfg, _, root = setup
    out = tmp_path / "exported"
    first = export_model(cfg, str(out), "onnx")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    changed = cfg.clone()
    changed.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 999  # new post-processing settings
    _export_with_digest_failure(changed, str(out), monkeypatch)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert os.listdir(tmp_path) == ["exported"]  # no temporary folder left behind
    model = ExportedPanopticModel(str(out))
    assert model.meta["postprocessor"] == first["postprocessor"]
    # a completed re-export replaces the whole folder
    second = export_model(changed, str(out), "onnx")
    assert second["postprocessor"]["kwargs"]["stuff_area_threshold"] == 999
    assert ExportedPanopticModel(str(out)).meta["model_file"] == second["model_file"]
    assert sorted(os.listdir(tmp_path)) == ["exported"]


def test_model_file_from_another_export_is_refused(setup, tmp_path):
    import onnx

    _, _, root = setup
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("export.json", "config.yaml"):
        (mixed / name).write_bytes((root / "onnx" / name).read_bytes())
    other = onnx.load(str(root / "onnx" / "model.onnx"))
    other.doc_string = "another export of the same network"
    onnx.save(other, str(mixed / "model.onnx"))
    with pytest.raises(
        ExportError, match=r"model.onnx .* is not the model file that .*export.json"
    ):
        ExportedPanopticModel(str(mixed))


def test_output_folder_with_other_files_is_refused(setup, tmp_path):
    cfg, _, _ = setup
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="holds files that are not an export.*notes.txt"):
        export_model(cfg, str(tmp_path), "onnx")
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_export_without_weights_is_refused_unless_allowed(setup, tmp_path, caplog):
    cfg, _, root = setup
    config = tmp_path / "cfg.yaml"
    random_cfg = cfg.clone()
    random_cfg.MODEL.WEIGHTS = ""
    config.write_text(random_cfg.dump())
    out = tmp_path / "random"
    argv = ["--config-file", str(config), "--format", "torchscript", "--output", str(out)]
    with pytest.raises(ExportError, match="MODEL.WEIGHTS is empty.*--allow-random-weights"):
        export_main(argv)
    assert not out.exists()
    meta = export_main(argv + ["--allow-random-weights"])
    assert meta["random_weights"] is True
    project_logger = logging.getLogger("panoptic_ext")  # does not propagate after setup_logger
    project_logger.addHandler(caplog.handler)
    try:
        predictor = PanopticONNXPredictor(str(out))
    finally:
        project_logger.removeHandler(caplog.handler)
    assert predictor.random_weights
    assert "RANDOMLY INITIALIZED" in caplog.text
    assert not PanopticONNXPredictor(str(root / "onnx")).random_weights

    import runpy

    tool = os.path.join(os.path.dirname(__file__), "..", "tools", "evaluate_export.py")
    saved = sys.argv
    sys.argv = [tool, "--model-dir", str(out), "--compare-eager"]
    try:
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(tool, run_name="__main__")
    finally:
        sys.argv = saved
    assert "randomly initialized" in str(exited.value.code)


def test_max_size_below_the_test_size_is_refused(setup, tmp_path):
    cfg, _, _ = setup
    with pytest.raises(ValueError, match="--max-size 200 .*INPUT.MAX_SIZE_TEST = 256"):
        export_model(cfg, str(tmp_path / "small"), "onnx", max_size=200)
    assert not (tmp_path / "small").exists()


@pytest.mark.parametrize("shape", [(1, 1000), (1000, 1), (10000, 10), (3, 4)])
def test_onnx_predictor_takes_thin_and_tiny_images(setup, shape):
    _, _, root = setup
    image = np.full(shape + (3,), 128, dtype=np.uint8)
    outputs = PanopticONNXPredictor(str(root / "onnx"))(image)
    assert tuple(outputs["panoptic_seg"][0].shape) == shape


def test_too_large_image_error_names_the_image(setup):
    _, _, root = setup
    model = ExportedPanopticModel(str(root / "onnx"))
    with pytest.raises(ValueError, match="img_7.png: image of 300x40 pixels"):
        model([{"image": torch.zeros(3, 300, 40), "file_name": "img_7.png"}])


def test_python_config_exports_what_it_trains(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate

    from panoptic_ext.apps.train.lazy_config import load_lazy_config

    quick = os.path.join(
        os.path.dirname(__file__),
        "..",
        "configs",
        "quick_schedules",
        "panoptic_fpn_R_18_synthetic_instant_test.py",
    )
    cfg = load_lazy_config(quick)
    torch.manual_seed(0)
    eager = instantiate(cfg.model).eval()
    DetectionCheckpointer(eager, save_dir=str(tmp_path)).save("lazy")
    out = tmp_path / "exported"
    meta = export_main(
        ["--config-file", quick, "--output", str(out), "--weights", str(tmp_path / "lazy.pth")]
    )
    assert meta["config"]["language"] == "python" and not meta["random_weights"]
    assert meta["input"]["max_size_test"] == 64
    image = _image((48, 64), 7)
    inputs = [{"image": image, "height": 48, "width": 64}]
    with torch.no_grad():
        expected = eager(inputs)[0]
    actual = ExportedPanopticModel(str(out))(inputs)[0]
    assert_same_panoptic(expected, actual)
    from panoptic_ext.apps.export.commands import exported_cfg

    assert exported_cfg(str(out)).train.init_checkpoint == str(tmp_path / "lazy.pth")


def test_python_config_without_weights_names_its_key(tmp_path):
    quick = os.path.join(
        os.path.dirname(__file__),
        "..",
        "configs",
        "quick_schedules",
        "panoptic_fpn_R_18_synthetic_instant_test.py",
    )
    with pytest.raises(ExportError, match="train.init_checkpoint is empty"):
        export_main(["--config-file", quick, "--output", str(tmp_path / "x")])


def test_frozen_batchnorm_folding_is_exact(setup):
    from detectron2.layers import FrozenBatchNorm2d

    from panoptic_ext.apps.export.folding import fold_frozen_batchnorm

    cfg, _, _ = setup
    cfg = cfg.clone()
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            for buffer in (m.weight, m.bias, m.running_mean):
                buffer.copy_(torch.randn(buffer.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    image = _image((64, 96), 8)[None] - 128
    with torch.no_grad():
        before = model.backbone(image)
        assert fold_frozen_batchnorm(model) == 20  # stem + 4 stages x 2 blocks x 2 + 3 shortcuts
        after = model.backbone(image)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    for name in before:
        scale = before[name].abs().max()
        assert (before[name] - after[name]).abs().max() <= 1e-5 * scale, name


def test_reduced_precision_is_refused_where_the_cpu_lacks_it(setup, tmp_path, monkeypatch):
    from panoptic_ext.apps.export import quantize

    with pytest.raises(ExportError, match="bf16 needs bfloat16.*avx512_bf16"):
        quantize.check_cpu_support("bf16", flags=["sse2", "avx2"])
    quantize.check_cpu_support("int8", flags=["avx2"])
    cfg, _, _ = setup
    monkeypatch.setattr(quantize, "cpu_flags", lambda: ["sse2"])
    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.dump())
    argv = ["--config-file", str(config), "--output", str(tmp_path / "q"), "--precision", "int8"]
    with pytest.raises(ExportError, match="int8 needs 8-bit integer dot products"):
        export_main(argv)
    assert not (tmp_path / "q").exists()


def test_int8_export_is_opt_in_and_runs(setup, tmp_path):
    from panoptic_ext.apps.export.quantize import calibration_inputs, quantize_export

    _, eager, root = setup
    meta = json.load(open(root / "onnx" / "export.json"))
    assert meta.get("precision", "fp32") == "fp32"  # the default export is float32
    images = calibration_inputs(meta, [])
    int8 = quantize_export(str(root / "onnx"), str(tmp_path / "int8"), images)
    assert int8["precision"] == "int8"
    model = ExportedPanopticModel(str(tmp_path / "int8"))
    assert model.precision == "int8"
    size = SIZES[0]
    inputs = [{"image": _image(size, 1), "height": size[0], "width": size[1]}]
    assert model(inputs)[0]["panoptic_seg"][0].shape == size
    with pytest.raises(ExportError, match="already quantized"):
        quantize_export(str(tmp_path / "int8"), str(tmp_path / "again"), images)


def test_panoptic_agreement_by_hand():
    from panoptic_ext.apps.export.faithfulness import panoptic_agreement

    thing, stuff = {"isthing": True, "category_id": 0}, {"isthing": False, "category_id": 1}
    a = {"panoptic_seg": (torch.tensor([[1, 1], [2, 0]]), [{"id": 1, **thing}, {"id": 2, **stuff}])}
    b = {"panoptic_seg": (torch.tensor([[5, 5], [5, 0]]), [{"id": 5, **thing}])}
    assert panoptic_agreement(a, b) == 0.75  # segment 2 merged into 5: its pixel disagrees
    assert panoptic_agreement(a, a) == 1.0
