"""
The model's outputs speak the test dataset's label space: detectron2's own ``Visualizer`` and
``COCOPanopticEvaluator`` read them with ``MetadataCatalog.get(cfg.DATASETS.TEST[0])``; or, with
``MODEL.PANOPTIC_EXT.POSTPROCESS.CATEGORY_IDS "detectron2"``, detectron2's PanopticFPN ids. The
ids never depend on whether the dataset was registered before or after ``build_model``.
"""

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.visualizer import Visualizer

import panoptic_ext  # noqa: F401  (registers the plugins)
from panoptic_ext.apps.predict.panoptic_visualization import record_to_panoptic
from panoptic_ext.data import PanopticClassLayout, PanopticFPNDatasetMapper
from panoptic_ext.evaluation import PanopticQualityEvaluator
from tests.common import make_detections_confident
from tests.reliability_common import register_tiny_synthetic, tiny_cfg, unregister

PREFIX = "label_space_synthetic"
LATE_PREFIX = "label_space_registered_late"
KEY = "MODEL.PANOPTIC_EXT.POSTPROCESS.CATEGORY_IDS"


def _cfg(test, metadata, category_ids="dataset"):
    num_things = len(metadata.thing_classes)
    cfg = tiny_cfg(
        test=test, num_things=num_things, num_stuff=len(metadata.stuff_classes) - num_things
    )
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 16
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = 96
    cfg.merge_from_list([KEY, category_ids])
    return cfg


def _segments(model, state_dict, inputs):
    model.load_state_dict(state_dict)
    with torch.no_grad():
        return [out["panoptic_seg"][1] for out in model.eval()(inputs)]


@pytest.fixture(scope="module")
def predictions(tmp_path_factory):
    """The tiny synthetic validation split, its metadata, a random model's outputs, and the
    model's weights."""
    register_tiny_synthetic(str(tmp_path_factory.mktemp("data")), PREFIX, num_val=3, size=96)
    name = f"{PREFIX}_val"
    metadata = MetadataCatalog.get(name)
    cfg = _cfg([name], metadata)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    make_detections_confident(model)
    mapper = PanopticFPNDatasetMapper(cfg, is_train=False)
    inputs = [mapper(r) for r in DatasetCatalog.get(name)]
    with torch.no_grad():
        outputs = model(inputs)
    yield name, metadata, inputs, outputs, model.state_dict()
    unregister(f"{PREFIX}_train", name)


def test_segments_name_the_dataset_classes(predictions):
    name, metadata, inputs, outputs, _ = predictions
    by_dataset_id = {c["id"]: c["name"] for c in metadata.categories}
    thing_ids = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    stuff_ids = {v: k for k, v in metadata.stuff_dataset_id_to_contiguous_id.items()}
    kinds = set()
    for x, out in zip(inputs, outputs):
        panoptic_seg, segments_info = out["panoptic_seg"]
        for s in segments_info:
            kinds.add(s["isthing"])
            ids, names = (
                (thing_ids, metadata.thing_classes)
                if s["isthing"]
                else (stuff_ids, metadata.stuff_classes)
            )
            # the name detectron2's Visualizer shows is the dataset category's own name
            assert names[s["category_id"]] == by_dataset_id[ids[s["category_id"]]]
        image = x["image"].permute(1, 2, 0).numpy()
        drawn = Visualizer(image, metadata).draw_panoptic_seg(panoptic_seg, segments_info)
        assert drawn.get_image().shape[:2] == tuple(panoptic_seg.shape)
    assert kinds == {True, False}  # things and stuff were both checked
    # instances keep detectron2's instance classes 0..T-1 (what its COCOEvaluator requires)
    assert set(outputs[0]["instances"].pred_classes.tolist()) <= set(range(len(thing_ids)))


def test_detectron2_panoptic_evaluator_reads_the_outputs(predictions, tmp_path):
    pytest.importorskip("panopticapi")
    from detectron2.evaluation import COCOPanopticEvaluator

    name, metadata, inputs, outputs, _ = predictions
    layout = PanopticClassLayout.from_metadata(metadata)
    # the ground truth written as model outputs: both evaluators must find it perfect
    perfect = [{"panoptic_seg": record_to_panoptic(r, layout)} for r in DatasetCatalog.get(name)]
    for outs, perfect_score in ((outputs, None), (perfect, 100.0)):
        results = []
        for evaluator in (
            COCOPanopticEvaluator(name, output_dir=str(tmp_path)),
            PanopticQualityEvaluator(name, distributed=False),
        ):
            evaluator.reset()
            evaluator.process(inputs, outs)
            results.append(evaluator.evaluate()["panoptic_seg"])
        theirs, ours = results
        for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key
            if perfect_score is not None:
                assert theirs[key] == pytest.approx(perfect_score), key


def test_unregistered_test_dataset_is_an_error_naming_it_and_the_key(predictions):
    _, metadata, _, _, _ = predictions
    with pytest.raises(ValueError, match=f"'{LATE_PREFIX}_val' is not registered.*{KEY}"):
        build_model(_cfg([f"{LATE_PREFIX}_val"], metadata))
    with pytest.raises(ValueError, match=f"{KEY} must be one of"):
        build_model(_cfg([], metadata, "contiguous"))


def test_category_ids_do_not_depend_on_registration_order(predictions, tmp_path):
    name, metadata, inputs, _, state_dict = predictions
    late = f"{LATE_PREFIX}_val"
    # "detectron2": the same ids before and after registration, and without any test dataset
    before = _segments(build_model(_cfg([late], metadata, "detectron2")), state_dict, inputs)
    register_tiny_synthetic(str(tmp_path), LATE_PREFIX, num_val=1, size=96)
    try:
        after = _segments(build_model(_cfg([late], metadata, "detectron2")), state_dict, inputs)
        registered_first = _segments(
            build_model(_cfg([name], metadata, "detectron2")), state_dict, inputs
        )
        # "dataset", registered after the first build: the dataset's ids, as the fixture's model
        dataset_ids = _segments(build_model(_cfg([late], metadata)), state_dict, inputs)
    finally:
        unregister(f"{LATE_PREFIX}_train", late)
    without_dataset = _segments(build_model(_cfg([], metadata)), state_dict, inputs)
    assert before == after == registered_first == without_dataset
    # (the fixture's outputs may have been converted in place by an evaluator)
    assert dataset_ids == _segments(build_model(_cfg([name], metadata)), state_dict, inputs)
    layout = PanopticClassLayout.from_metadata(metadata)
    stuff_ids = (0,) + layout.stuff_output_ids
    converted = [
        [
            dict(
                s,
                category_id=(layout.thing_output_ids if s["isthing"] else stuff_ids)[
                    s["category_id"]
                ],
            )
            for s in image
        ]
        for image in before
    ]
    assert converted == dataset_ids
    # the dataset's ids are not detectron2's here, so the two conventions were really told apart
    assert converted != before
