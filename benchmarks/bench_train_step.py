"""
One training step (forward, backward, SGD update) of panoptic_ext's ``PanopticFPNExt`` vs
detectron2's ``PanopticFPN``: same weights, same batch, same random sampling, side by side.

    python benchmarks/bench_train_step.py [--quick] [--repeats 3]
"""

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

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


def run(
    quick: bool = False,
    sizes: Optional[Sequence[Tuple[int, int]]] = None,
    repeats: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """
    Time one training step of ours and detectron2's, interleaved, after two warm-up steps each,
    and compare their losses (same seed, so the same anchors and proposals are sampled).

    Args:
        quick (bool): tiny model and images, one repeat.
        sizes (list): (H, W) of the batch's images (default two 512x640).
        repeats (int): timed steps per model (default 5, 1 when quick).
    """
    sizes = sizes or (QUICK_SIZES if quick else DEFAULT_SIZES)
    repeats = repeats or (1 if quick else 5)
    state_dict = calibrated_state_dict(tiny=quick)
    batch = synthetic_train_batch(sizes)
    steppers = {
        "d2": _Stepper(build_with_weights(reference_cfg(tiny=quick), state_dict), batch),
        "ours": _Stepper(build_with_weights(ours_cfg(tiny=quick), state_dict), batch),
    }
    losses = {name: step() for name, step in steppers.items()}  # warm-up + loss check
    cpu: Dict[str, List[float]] = {}
    # The loss-check step above warms up; one more untimed round each: the first steps of a
    # model run slower (allocator growth).
    times = time_interleaved(steppers, repeats, warmup=1, cpu_times=cpu)

    ref, ours = losses["d2"], losses["ours"]
    same_keys = set(ref) <= set(ours)
    max_rel = max(
        (abs(ours[k] - ref[k]) / max(abs(ref[k]), 1e-12) for k in ref if k in ours), default=0.0
    )
    shapes = " + ".join(f"{h}x{w}" for h, w in sizes)
    model = "tiny R18" if quick else "R50"
    return [
        make_row(
            "train_step",
            f"{model}-FPN, batch of {len(sizes)} ({shapes}), forward + backward + SGD step",
            repeats,
            REFERENCE,
            ours_s=median(times["ours"]),
            reference_s=median(times["d2"]),
            target=TARGET,
            ratio_of_min=min_ratio(times, "ours", "d2"),
            cpu_ratio=median(cpu["ours"]) / median(cpu["d2"]),
            losses_match=bool(same_keys and max_rel < 1e-4),
            loss_max_rel_diff=max_rel,
            reference_loss=round(sum(ref.values()), 5),
            ours_loss=round(sum(ours[k] for k in ref if k in ours), 5),
        )
    ]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    from run_all import print_table

    print_table(run(args.quick, repeats=args.repeats))


if __name__ == "__main__":
    sys.exit(main())
