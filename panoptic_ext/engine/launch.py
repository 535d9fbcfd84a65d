"""The one entry point that starts (possibly distributed) jobs, to extend in one place."""

from typing import Any, Callable, Optional, Sequence

from .distributed import launch as _launch

__all__ = ["launch"]


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
) -> None:
    """
    Run ``main_func(*args)`` in one process, or in ``num_gpus_per_machine`` processes per machine
    with ``torch.distributed`` set up: detectron2's ``launch``, or without a GPU
    :func:`panoptic_ext.engine.distributed.launch_cpu` (gloo backend).

    Args:
        main_func (callable): the job.
        num_gpus_per_machine (int): processes per machine (one GPU each, or CPU processes).
        num_machines (int): machines taking part.
        machine_rank (int): rank of this machine.
        dist_url (str): rendezvous URL such as "tcp://127.0.0.1:50152", or "auto".
        args (tuple): arguments of ``main_func``.
    """
    # detectron2's launch, or CPU processes with the gloo backend when there is no GPU.
    _launch(
        main_func,
        num_gpus_per_machine,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        args=tuple(args),
    )
