"""
The model keeps detectron2's contracts wherever detectron2's PanopticFPN runs: plain dict outputs
with the configured keys, only configured modules, the same outputs under CPU autocast
(float16, bfloat16), the same losses of an autocast training step, exact tracing, and CPU-only
speed-ups that never change an output.
"""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import panoptic_ext  # noqa: F401  (registers the plugins)
from panoptic_ext.compat import import_detectron2_export
from panoptic_ext.modeling import (
    LOSS_WEIGHT_SCHEDULE_REGISTRY,
    bf16_autocast,
    optimize_for_cpu_inference,
)
from tests.common import (
    assert_same_outputs,
    detectron2_reference_cfg,
    make_detections_confident,
    random_image_batch,
)
from tests.reliability_common import tiny_cfg
from tests.test_meta_arch import training_batch

SIZES = [(96, 128), (95, 127)]
flatten = import_detectron2_export("flatten")
TracingAdapter, flatten_to_tuple = flatten.TracingAdapter, flatten.flatten_to_tuple


def _cfg(**postprocess):
    cfg = tiny_cfg(num_things=80, num_stuff=53)
    cfg.MODEL.ROI_HEADS.NAME = "PanopticROIHeads"
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 64  # small images
    cfg.TEST.DETECTIONS_PER_IMAGE = 40
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0  # lambda_s
    for key, value in postprocess.items():
        cfg.MODEL.PANOPTIC_EXT.POSTPROCESS[key] = value
    return cfg


def _pair(**postprocess):
    """(ours, detectron2's PanopticFPN) with the same weights, in eval mode."""
    torch.manual_seed(0)
    cfg = _cfg(**postprocess)
    theirs = build_model(detectron2_reference_cfg(cfg))
    make_detections_confident(theirs)
    ours = build_model(cfg)
    ours.load_state_dict(theirs.state_dict())
    return ours.eval(), theirs.eval()


@pytest.fixture(scope="module")
def pair():
    return _pair()


def _infer(model, inputs, autocast_dtype=None):
    with (
        torch.no_grad(),
        torch.autocast(
            "cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ),
    ):
        return model(inputs)


def test_outputs_are_plain_dicts_of_the_configured_outputs(pair):
    inputs = random_image_batch(SIZES, seed=3)
    expected = _infer(pair[1], inputs)  # the same weights for every pair
    for sem_seg, instances in [(True, True), (False, False), (True, False)]:
        ours, _ = _pair(RETURN_SEM_SEG=sem_seg, RETURN_INSTANCES=instances)
        outputs = _infer(ours, inputs)
        keys = ["sem_seg"] * sem_seg + ["instances"] * instances + ["panoptic_seg"]
        for out in outputs:
            assert type(out) is dict and list(out) == keys
            out["extra"] = 1  # a user may add to it, as to detectron2's
        # with or without the other outputs (masks predicted only for the fusion when
        # "instances" is not returned), the outputs are detectron2's
        assert_same_outputs(outputs, expected, keys=keys)
    assert sum(s["isthing"] for s in expected[0]["panoptic_seg"][1]) >= 3


def test_inference_without_no_grad_equals_detectron2(pair):
    ours, theirs = pair
    inputs = random_image_batch(SIZES[:1], seed=7)
    # a user calling the eval-mode model with autograd on, as detectron2's model allows
    assert_same_outputs(ours(inputs), theirs(inputs), keys=("panoptic_seg",))


def test_build_model_builds_only_configured_modules():
    cfg = _cfg()
    model = build_model(cfg)
    named = {
        cfg.MODEL.META_ARCHITECTURE,
        cfg.MODEL.SEM_SEG_HEAD.NAME,
        cfg.MODEL.ROI_HEADS.NAME,
        LOSS_WEIGHT_SCHEDULE_REGISTRY.get(cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.NAME).__name__,
    }
    for name, module in model.named_modules():
        cls = type(module)
        from_libraries = cls.__module__.startswith(("detectron2.", "torch."))
        assert from_libraries or cls.__name__ in named, f"{name}: {cls.__module__}.{cls.__name__}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_inference_equals_detectron2(pair, dtype):
    ours, theirs = pair
    inputs = random_image_batch(SIZES, seed=4)
    expected = _infer(theirs, inputs, dtype)
    assert_same_outputs(_infer(ours, inputs, dtype), expected)
    assert sum(s["isthing"] for s in expected[0]["panoptic_seg"][1]) >= 3


def test_autocast_training_step_equals_detectron2(pair):
    ours, theirs = pair
    losses = []
    for model in (theirs, ours):
        model.train()
        torch.manual_seed(1)  # same proposal sampling
        batch = training_batch([(96, 128)])
        for x in batch:  # the twin has 53 stuff + 'things', 80 thing classes
            x["sem_seg"] = x["sem_seg"].clamp(max=53).masked_fill(x["sem_seg"] == 255, 255)
        with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
            loss_dict = model(batch)
        sum(loss_dict.values()).backward()
        losses.append({k: v.item() for k, v in loss_dict.items()})
        model.zero_grad()
        model.eval()
    assert losses[0] == losses[1]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses[1].values())


def _traced(model, sample):
    adapter = TracingAdapter(
        model, sample, lambda m, inputs: m.inference(inputs, do_postprocess=False)
    )
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)

    def run(inputs):
        flat, _ = flatten_to_tuple(inputs)
        return adapter.outputs_schema(traced(*flat))

    return run


@pytest.mark.parametrize("optimized", [False, True])
def test_tracing_equals_eager_on_other_inputs(optimized):
    cfg = _cfg()
    # a low score threshold: every image has its own, large number of detections
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0125
    cfg.TEST.DETECTIONS_PER_IMAGE = 1000
    torch.manual_seed(3)
    ours = build_model(cfg).eval()
    if optimized:  # the CPU speed-ups step aside while tracing
        optimize_for_cpu_inference(ours)
    sample = [{"image": random_image_batch([(96, 128)], seed=1)[0]["image"]}]
    run = _traced(ours, sample)
    counts = set()
    for seed, size in [(2, (96, 128)), (3, (80, 112)), (4, (64, 64))]:
        inputs = [{"image": random_image_batch([size], seed=seed)[0]["image"]}]
        with torch.no_grad():
            instances, sem_seg = ours.inference(inputs, do_postprocess=False)
            traced_instances, traced_sem_seg = run(inputs)
        assert len(traced_instances[0]) == len(instances[0]) > 0
        counts.add(len(instances[0]))
        for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
            x, y = instances[0].get(field), traced_instances[0].get(field)
            x, y = getattr(x, "tensor", x), getattr(y, "tensor", y)
            assert torch.equal(x, y), field
        assert torch.equal(sem_seg, traced_sem_seg)
    assert len(counts) > 1  # the trace did not freeze the number of detections


def test_cpu_speedups_keep_every_output():
    ours, _ = _pair()
    inputs = random_image_batch(SIZES, seed=6)
    expected = _infer(ours, inputs)
    changed = optimize_for_cpu_inference(ours)
    assert all(count > 0 for count in changed.values()), changed
    assert_same_outputs(_infer(ours, inputs), expected)
    # under autocast they step aside: detectron2's autocast results
    expected = _infer(_pair()[0], inputs, torch.bfloat16)
    assert_same_outputs(_infer(ours, inputs, torch.bfloat16), expected)
    assert optimize_for_cpu_inference(ours) == dict.fromkeys(changed, 0)  # idempotent


def test_cpu_speedups_refuse_training_mode_and_other_devices():
    ours, _ = _pair()
    with pytest.raises(ValueError, match="eval mode"):
        optimize_for_cpu_inference(ours.train())
    with pytest.raises(ValueError, match="CPU models only"):
        optimize_for_cpu_inference(ours.eval().to("meta"))
    with pytest.raises(ValueError, match="unknown CPU speed-ups"):
        optimize_for_cpu_inference(_pair()[0], speedups=["turbo"])


def test_bf16_path_is_opt_in_and_refused_without_cpu_support(pair):
    ours, _ = pair
    inputs = random_image_batch(SIZES[:1], seed=7)
    with bf16_autocast(enabled=False):  # off: FP32, outputs unchanged
        assert not torch.is_autocast_enabled("cpu")
        assert_same_outputs(ours(inputs), _infer(ours, inputs))
    with pytest.raises(RuntimeError, match="avx512_bf16.*TEST.CPU_BF16 False"):
        bf16_autocast(flags=frozenset({"avx2", "fma"}))
    # with support: detectron2's bf16 autocast results
    with torch.no_grad(), bf16_autocast(flags=frozenset({"avx512_bf16"})):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        outputs = ours(inputs)
    assert_same_outputs(outputs, _infer(ours, inputs, torch.bfloat16))
