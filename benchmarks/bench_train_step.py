"""
One training step (forward, backward, SGD update) of panoptic_ext's ``PanopticFPNExt`` vs
detectron2's ``PanopticFPN``: same weights, same batch, same random sampling, side by side.

    python benchmarks/bench_train_step.py [--quick] [--repeats 6] [--no-control] [--profile]

Each timed round runs every model once, cycling through all their orders, after untimed warm-up
steps. A second detectron2 model with the same weights (the control) runs in the same rounds:
its ratio to the first is the run's noise floor (two identical models differ by about 1% on this
shared machine). Reported: the ratio of the medians (``ratio``), the median, minimum and maximum
of the per-round ratios (both models back to back), the ratio of the fastest steps and of CPU
times, the same for the control, and whether losses and gradients are identical. ``--profile``
prints torch.profiler op tables of both models side by side instead (where time goes, and which
ops only one of them runs).
"""

import argparse
import collections
import itertools
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from common import (
    build_with_weights,
    calibrated_state_dict,
    make_row,
    median,
    min_ratio,
    ours_cfg,
    reference_cfg,
    synthetic_image,
    time_interleaved,
)

REFERENCE = "detectron2 PanopticFPN"
TARGET = 1.02
WARMUP_ROUNDS = 2  # untimed rounds after the loss check: the first steps of a model are slower
DEFAULT_REPEATS = 6
DEFAULT_SIZES = ((512, 640), (512, 640))
QUICK_SIZES = ((128, 160), (128, 160))
NUM_STUFF = 53  # COCO: merged sem-seg labels 1..53, 0 = things


def synthetic_train_batch(
    sizes: Sequence[Tuple[int, int]], instances_per_image: int = 8, seed: int = 0
) -> List[Dict[str, Any]]:
    """
    Training inputs as PanopticFPNDatasetMapper / detectron2's DatasetMapper give them: image,
    "instances" (gt_boxes, gt_classes, gt_masks as BitMasks) and "sem_seg" (merged labels:
    0 = things, 1..53 = stuff, 255 = void).
    """
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for i, (h, w) in enumerate(sizes):
        sem = torch.full((h, w), 255, dtype=torch.int64)
        for _ in range(6):  # stuff regions
            y0, x0 = int(torch.randint(0, h // 2, (1,), generator=g)), int(
                torch.randint(0, w // 2, (1,), generator=g)
            )
            sem[y0 : y0 + h // 2, x0 : x0 + w // 2] = int(
                torch.randint(1, NUM_STUFF + 1, (1,), generator=g)
            )
        masks, boxes = [], []
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        for _ in range(instances_per_image):  # things: ellipses
            bh, bw = int(torch.randint(h // 10, h // 3, (1,), generator=g)), int(
                torch.randint(w // 10, w // 3, (1,), generator=g)
            )
            y0, x0 = int(torch.randint(0, h - bh, (1,), generator=g)), int(
                torch.randint(0, w - bw, (1,), generator=g)
            )
            cy, cx = y0 + bh / 2, x0 + bw / 2
            mask = ((yy - cy) / (bh / 2)) ** 2 + ((xx - cx) / (bw / 2)) ** 2 <= 1
            masks.append(mask)
            boxes.append([x0, y0, x0 + bw, y0 + bh])
            sem[mask] = 0
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.randint(0, 80, (instances_per_image,), generator=g)
        instances.gt_masks = BitMasks(torch.stack(masks))
        batch.append(
            {
                "image": synthetic_image(h, w, seed + i),
                "height": h,
                "width": w,
                "instances": instances,
                "sem_seg": sem,
            }
        )
    return batch


class _Stepper:
    """One SGD step of a model on a fixed batch, with a fixed RNG seed (same proposals sampled).
    The learning rate is 0, so the weights, and hence every step's work, stay the same."""

    def __init__(self, model: torch.nn.Module, batch: List[Dict[str, Any]]):
        self.model = model.train()
        self.batch = batch
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4
        )

    def __call__(self) -> Dict[str, float]:
        from detectron2.utils.events import EventStorage

        torch.manual_seed(0)
        with EventStorage(0):
            losses = self.model(self.batch)
            total = sum(losses.values())
            self.optimizer.zero_grad()
            total.backward()
            self.optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def gradients(self) -> Dict[str, torch.Tensor]:
        """The gradients of the last step, by parameter name."""
        return {
            name: p.grad.detach().clone()
            for name, p in self.model.named_parameters()
            if p.grad is not None
        }


def _build_steppers(
    quick: bool, sizes: Sequence[Tuple[int, int]], control: bool = False
) -> Dict[str, _Stepper]:
    """Steppers "d2", "ours" and, with ``control``, "d2_copy" (a second detectron2 model)."""
    state_dict = calibrated_state_dict(tiny=quick)
    batch = synthetic_train_batch(sizes)
    steppers = {
        "d2": _Stepper(build_with_weights(reference_cfg(tiny=quick), state_dict), batch),
        "ours": _Stepper(build_with_weights(ours_cfg(tiny=quick), state_dict), batch),
    }
    if control:
        model = build_with_weights(reference_cfg(tiny=quick), state_dict)
        steppers["d2_copy"] = _Stepper(model, batch)
    return steppers


def _time_permuted(
    steppers: Mapping[str, Callable[[], Any]], repeats: int
) -> Tuple[Dict[str, List[float]], Dict[str, List[float]], int]:
    """
    Timed rounds, each running every stepper once, cycling through all orders of the steppers
    (A B, B A with two; all six with three) so that none is favoured by its place in a round.
    ``repeats`` is rounded up to a whole number of cycles.

    Returns:
        (wall times, CPU times, rounds): name -> one time per round, in round order.
    """
    orders = list(itertools.permutations(steppers))
    rounds = -(-repeats // len(orders)) * len(orders)
    times: Dict[str, List[float]] = {name: [] for name in steppers}
    cpu: Dict[str, List[float]] = {name: [] for name in steppers}
    for i in range(rounds):
        round_cpu: Dict[str, List[float]] = {}
        ordered = {name: steppers[name] for name in orders[i % len(orders)]}
        round_times = time_interleaved(ordered, 1, warmup=0, cpu_times=round_cpu)
        for name in steppers:
            times[name] += round_times[name]
            cpu[name] += round_cpu[name]
    return times, cpu, rounds


def _ratios(
    times: Mapping[str, Sequence[float]], cpu: Mapping[str, Sequence[float]], name: str
) -> Dict[str, float]:
    """``name`` vs "d2": ratio of medians, per-round ratios (median, min, max), ratio of the
    fastest steps, ratio of median CPU times."""
    paired = [a / b for a, b in zip(times[name], times["d2"])]  # same round, back to back
    return {
        "ratio": median(times[name]) / median(times["d2"]),
        "paired_ratio_median": median(paired),
        "paired_ratio_min": min(paired),
        "paired_ratio_max": max(paired),
        "ratio_of_min": min_ratio(times, name, "d2"),
        "cpu_ratio": median(cpu[name]) / median(cpu["d2"]),
    }


def _max_rel_diff(ours: Mapping[str, Any], ref: Mapping[str, Any]) -> float:
    """Largest relative difference over the reference's entries (inf if ours lacks one)."""
    worst = 0.0
    for key, value in ref.items():
        if key not in ours:
            return float("inf")
        a, b = torch.as_tensor(ours[key]).double(), torch.as_tensor(value).double()
        if a.shape != b.shape:
            return float("inf")
        scale = max(float(b.abs().max()) if b.numel() else 0.0, 1e-12)
        worst = max(worst, float((a - b).abs().max()) / scale if a.numel() else 0.0)
    return worst


def run(
    quick: bool = False,
    sizes: Optional[Sequence[Tuple[int, int]]] = None,
    repeats: Optional[int] = None,
    control: bool = True,
) -> List[Dict[str, Any]]:
    """
    Time one training step of ours and detectron2's, interleaved, and compare their losses and
    gradients (same seed, so the same anchors and proposals are sampled).

    With ``control``, a second detectron2 model with the same weights runs in the same rounds:
    its ratio to the first (``control_*`` fields, ideally 1) is this run's noise floor, and a
    ratio of ours within it is no measurable difference.

    Args:
        quick (bool): tiny model and images.
        sizes (list): (H, W) of the batch's images (default two 512x640).
        repeats (int): timed rounds (default 6), rounded up to a whole cycle of orders.
        control (bool): time the detectron2 control model too.
    """
    sizes = sizes or (QUICK_SIZES if quick else DEFAULT_SIZES)
    steppers = _build_steppers(quick, sizes, control)
    losses, grads = {}, {}
    for name, step in steppers.items():  # the first (cold) step checks losses and gradients
        losses[name] = step()
        grads[name] = step.gradients()
    time_interleaved(steppers, 0, warmup=WARMUP_ROUNDS)
    times, cpu, rounds = _time_permuted(steppers, repeats or DEFAULT_REPEATS)

    ref, ours = losses["d2"], losses["ours"]
    loss_diff = _max_rel_diff(ours, ref)
    grad_diff = _max_rel_diff(grads["ours"], grads["d2"])
    shapes = " + ".join(f"{h}x{w}" for h, w in sizes)
    model = "tiny R18" if quick else "R50"
    ratios = _ratios(times, cpu, "ours")
    extra: Dict[str, Any] = {k: v for k, v in ratios.items() if k != "ratio"}
    if control:
        extra.update({f"control_{k}": v for k, v in _ratios(times, cpu, "d2_copy").items()})
    return [
        make_row(
            "train_step",
            f"{model}-FPN, batch of {len(sizes)} ({shapes}), forward + backward + SGD step",
            rounds,
            REFERENCE,
            ours_s=median(times["ours"]),
            reference_s=median(times["d2"]),
            target=TARGET,
            **extra,
            warmup_rounds=WARMUP_ROUNDS + 1,
            losses_match=bool(loss_diff < 1e-4),
            loss_max_rel_diff=loss_diff,
            grads_match=bool(grad_diff < 1e-4),
            grad_max_rel_diff=grad_diff,
            reference_loss=round(sum(ref.values()), 5),
            ours_loss=round(sum(ours[k] for k in ref if k in ours), 5),
        )
    ]


def _op_times(step: Callable[[], Any]) -> Dict[str, Tuple[float, int]]:
    """Self CPU milliseconds and call count per op of one profiled call of ``step``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()}


def profile_table(quick: bool = False, rounds: int = 2, top: int = 30) -> List[str]:
    """
    Profile the two training steps, interleaved (after the same warm-up as :func:`run`), and
    return a side-by-side op table: self CPU ms per step and calls per step of each model, then
    every op whose call count differs. Only differences in call counts are systematic; time
    differences in shared ops are the machine's noise.

    Args:
        quick (bool): tiny model and images.
        rounds (int): profiled steps per model, averaged.
        top (int): rows of the time table.
    """
    steppers = _build_steppers(quick, QUICK_SIZES if quick else DEFAULT_SIZES)
    time_interleaved(steppers, 0, warmup=WARMUP_ROUNDS + 1)
    totals: Dict[str, Dict[str, List[float]]] = {
        n: collections.defaultdict(lambda: [0.0, 0.0]) for n in steppers
    }
    for r in range(rounds):
        for name in list(steppers) if r % 2 == 0 else list(steppers)[::-1]:
            for op, (ms, count) in _op_times(steppers[name]).items():
                totals[name][op][0] += ms / rounds
                totals[name][op][1] += count / rounds
    d2, ours = totals["d2"], totals["ours"]
    ops = sorted(set(d2) | set(ours), key=lambda k: -max(d2[k][0], ours[k][0]))
    lines = [
        f"{'op (self CPU, per step)':48s} {'d2 ms':>9s} {'ours ms':>9s} {'d2 n':>6s} {'ours n':>6s}"
    ]
    lines.append(
        f"{'all ops':48s} {sum(v[0] for v in d2.values()):9.1f} "
        f"{sum(v[0] for v in ours.values()):9.1f}"
    )
    for op in ops[:top]:
        lines.append(
            f"{op[:48]:48s} {d2[op][0]:9.1f} {ours[op][0]:9.1f} {d2[op][1]:6.0f} {ours[op][1]:6.0f}"
        )
    lines.append("ops called a different number of times (calls per step, ms):")
    for op in ops:
        if round(d2[op][1]) != round(ours[op][1]):
            lines.append(
                f"  {op[:46]:46s} {d2[op][1]:6.0f} {ours[op][1]:6.0f}   "
                f"{d2[op][0]:.2f} {ours[op][0]:.2f}"
            )
    return lines


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="print op tables instead")
    parser.add_argument(
        "--no-control", action="store_true", help="no second detectron2 model (noise floor)"
    )
    args = parser.parse_args(argv)
    if args.profile:
        print("\n".join(profile_table(args.quick)), flush=True)
        return
    from run_all import print_table

    print_table(run(args.quick, repeats=args.repeats, control=not args.no_control))


if __name__ == "__main__":
    sys.exit(main())
