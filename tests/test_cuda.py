"""
PanopticFPNExt on a CUDA GPU against detectron2's PanopticFPN with the same weights: inference
(outputs on the model's device, panoptic output equal), the same under autocast (float16 and
bfloat16), and one AMP training step as detectron2's AMPTrainer takes it.

Marked ``cuda`` (``pytest -m cuda tests``; tools/gpu_check.sh runs them on a GPU machine) and
skipped where torch sees no CUDA device.
"""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import panoptic_ext  # noqa: F401  (registers the plugins)
from tests.common import (
    QUICK_CONFIG,
    R50_1X,
    detectron2_reference_cfg,
    load_cfg,
    make_detections_confident,
    make_fast,
    random_image_batch,
    training_batch,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEVICE = "cuda"
CONFIGS = {"R50": R50_1X, "quick": QUICK_CONFIG}
# Two odd sizes in one batch; the second output resized (the "height"/"width" of the input).
ODD_SIZES = [(200, 250), (200, 249)]
RESIZED = (150, 187)


def build_pair(config: str, confident: bool = True):
    """(detectron2's PanopticFPN, ours) on DEVICE from the config ``config``, same weights."""
    cfg = make_fast(load_cfg(CONFIGS[config]))
    cfg.MODEL.DEVICE = DEVICE
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 256  # tiny images
    # no registered test dataset: category ids in detectron2's own convention, comparable
    cfg.DATASETS.TEST = ()
    torch.manual_seed(0)
    d2 = build_model(detectron2_reference_cfg(cfg))
    if confident:
        make_detections_confident(d2)
    ours = build_model(cfg)
    ours.load_state_dict(d2.state_dict())
    assert type(d2).__name__ == "PanopticFPN" and type(ours).__name__ == "PanopticFPNExt"
    return d2, ours


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    torch.backends.cudnn.deterministic = True  # the same convolution algorithms for both models
    yield build_pair(request.param)
    torch.backends.cudnn.deterministic = False


def infer(model, inputs, dtype=None):
    model.eval()
    with torch.no_grad(), torch.autocast(DEVICE, dtype=dtype or torch.float16, enabled=bool(dtype)):
        return model(inputs)


def odd_size_inputs():
    inputs = random_image_batch(ODD_SIZES, seed=5)
    inputs[1].update(height=RESIZED[0], width=RESIZED[1])
    return inputs


def output_tensors(output):
    """name -> tensor of every tensor in one image's output (panoptic map, sem_seg, instances)."""
    tensors = {"panoptic_seg": output["panoptic_seg"][0], "sem_seg": output["sem_seg"]}
    for name, value in output["instances"].get_fields().items():
        tensors[f"instances.{name}"] = getattr(value, "tensor", value)
    return tensors


def assert_outputs_on(outputs, device):
    for i, output in enumerate(outputs):
        for name, tensor in output_tensors(output).items():
            assert tensor.device == device, f"image {i}: {name} is on {tensor.device}"


def assert_same_panoptic(ours, theirs):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        (pan_a, info_a), (pan_b, info_b) = a["panoptic_seg"], b["panoptic_seg"]
        assert pan_a.shape == pan_b.shape, f"image {i}"
        differ = int((pan_a != pan_b).sum())
        assert differ == 0, f"image {i}: {differ} of {pan_a.numel()} panoptic ids differ"
        assert info_a == info_b, f"image {i}: segments_info differ"


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16], ids=str)
def test_inference_on_device_equals_detectron2(pair, dtype):
    d2, ours = pair
    device = next(ours.parameters()).device
    assert device.type == DEVICE
    inputs = odd_size_inputs()
    theirs, outputs = infer(d2, inputs, dtype), infer(ours, inputs, dtype)

    assert_outputs_on(outputs, device)
    assert_same_panoptic(outputs, theirs)
    shapes = [tuple(out["panoptic_seg"][0].shape) for out in outputs]
    assert shapes == [ODD_SIZES[0], RESIZED]
    assert [tuple(out["sem_seg"].shape[1:]) for out in outputs] == shapes
    assert [out["instances"].image_size for out in outputs] == shapes
    infos = [info for out in outputs for info in out["panoptic_seg"][1]]
    assert sum(s["isthing"] for s in infos) >= 5, "fusion placed too few instances to test"
    assert sum(not s["isthing"] for s in infos) >= 2, "fusion placed too few stuff regions"
    if dtype is None:
        for a, b in zip(outputs, theirs):
            assert torch.equal(a["sem_seg"], b["sem_seg"])
            for field in ("pred_masks", "scores", "pred_classes"):
                assert torch.equal(a["instances"].get(field), b["instances"].get(field)), field


def amp_training_step(model, batch):
    """One step as detectron2's AMPTrainer takes it: losses under float16 autocast, scaled
    backward, GradScaler step. Returns (losses as floats, gradients finite, step taken)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # detectron2's AMPTrainer keeps GradScaler's default 2**16, whose first steps overflow in
    # float16 and are skipped by design; a smaller start makes this one step count.
    scaler = torch.amp.GradScaler(DEVICE, init_scale=2.0**10)
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1)  # the same proposal sampling for both models
    with EventStorage(0):
        with torch.autocast(DEVICE, dtype=torch.float16):
            loss_dict = model(batch)
        scaler.scale(sum(loss_dict.values())).backward()
        scaler.unscale_(optimizer)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite = bool(grads) and all(torch.isfinite(g).all() for g in grads)
        scaler.step(optimizer)
        scaler.update()
    stepped = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    return {k: v.item() for k, v in loss_dict.items()}, finite, stepped


def test_amp_training_step_matches_detectron2():
    # The quick config: its BatchNorm trains, so random weights give sane float16 activations
    # (R50's frozen BatchNorm with random weights overflows float16 in the backward pass).
    d2, ours = build_pair("quick", confident=False)
    batch = training_batch([(96, 128), (96, 127)], empty=(1,), num_classes=3, num_sem_classes=4)
    theirs, finite_d2, _ = amp_training_step(d2, batch)
    losses, finite, stepped = amp_training_step(ours, batch)

    assert set(losses) == set(theirs) and len(losses) == 6
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert finite and finite_d2, "non-finite gradients after unscaling"
    assert stepped, "the GradScaler skipped the optimizer step"
    for key, value in theirs.items():
        assert losses[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
