"""Starting (possibly distributed) jobs: :func:`launch` (``panoptic_ext.apps.train.launch``, used by
``train_net.py``), with multi-process training on the CPU (gloo backend), which detectron2's own
``launch`` cannot do.

detectron2 v0.6's ``launch`` asserts CUDA and uses NCCL, and on every version ``DefaultTrainer``
wraps the model with ``create_ddp_model``, which passes ``device_ids=[local_rank]`` that
``DistributedDataParallel`` rejects for a CPU model. :func:`launch` here starts CPU workers itself
(``torch.multiprocessing`` spawn, ``gloo`` process group, detectron2's per-machine group by
``compat.create_local_process_group``, a barrier) and makes ``create_ddp_model`` CPU-aware in
them; with CUDA, or with one process, it is detectron2's ``launch``. Its workers end in order (see
:func:`_end_worker`), so that an error of the job (e.g. the NaN guard's, raised by every process
at the same step) is what the launching process reports, never a signal of the teardown.
"""

import logging
import os
import time
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from panoptic_ext.compat import (
    create_local_process_group,
    enable_cpu_ddp,
    forget_local_process_group,
)

__all__ = ["DEFAULT_TIMEOUT", "launch", "launch_cpu", "use_cpu_launch"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)
# Seconds a failed worker waits for the others before it leaves (they fail at the same step).
_ERROR_WAIT_S = 60.0


def use_cpu_launch(num_processes_per_machine: int, num_machines: int = 1) -> bool:
    """True if the job needs several processes and there is no GPU to give each one."""
    return num_processes_per_machine * num_machines > 1 and not torch.cuda.is_available()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """
    The one entry point that starts (possibly distributed) jobs: run ``main_func(*args)`` in one
    process, or in ``num_gpus_per_machine`` processes per machine with ``torch.distributed`` set
    up: detectron2's ``launch``, or without a GPU :func:`launch_cpu` (gloo backend).

    Args:
        main_func (callable): the job.
        num_gpus_per_machine (int): processes per machine (one GPU each, or CPU processes).
        num_machines (int): machines taking part.
        machine_rank (int): rank of this machine.
        dist_url (str): rendezvous URL such as "tcp://127.0.0.1:50152", or "auto".
        args (tuple): arguments of ``main_func``.
        timeout (timedelta): timeout of collective operations.
    """
    if use_cpu_launch(num_gpus_per_machine, num_machines):
        return launch_cpu(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
        )
    return d2_launch(
        main_func,
        num_gpus_per_machine,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        args=tuple(args),
        timeout=timeout,
    )


def launch_cpu(
    main_func: Callable[..., Any],
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """
    Run ``main_func(*args)`` in ``num_processes_per_machine`` spawned CPU processes on this
    machine, joined in a ``gloo`` process group with the other machines' processes.

    ``main_func`` and ``args`` must be picklable (spawn). Each process gets
    ``cpu_count // num_processes_per_machine`` torch threads unless OMP_NUM_THREADS is set.

    Args:
        main_func (callable): the job, e.g. ``train_net``'s ``main``.
        num_processes_per_machine (int): processes on this machine (``--num-gpus``).
        num_machines (int): machines taking part.
        machine_rank (int): rank of this machine.
        dist_url (str): rendezvous URL ("tcp://host:port"); "auto" or None picks a free local
            port (single machine only).
        args (tuple): arguments of ``main_func``.
        timeout (timedelta): timeout of collective operations.
    """
    world_size = num_machines * num_processes_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise ValueError(
                "--dist-url must name the main machine's address in multi-machine jobs"
            )
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.info(
        "Starting %d CPU processes (gloo backend, %s), world size %d",
        num_processes_per_machine,
        dist_url,
        world_size,
    )
    mp.start_processes(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(
            main_func,
            world_size,
            num_processes_per_machine,
            machine_rank,
            dist_url,
            tuple(args),
            timeout,
        ),
        daemon=False,
        start_method="spawn",
    )


def _rendezvous_store(dist_url: str, rank: int, world_size: int, timeout: timedelta):
    """The TCPStore of a ``tcp://host:port`` URL (hosted by rank 0), or None for other URLs."""
    url = urlparse(dist_url)
    if url.scheme != "tcp" or not url.hostname or not url.port:
        return None
    return dist.TCPStore(url.hostname, url.port, world_size, rank == 0, timeout)


def _wait_for_all(store, key: str, world_size: int, seconds: float) -> bool:
    """Count this process in ``key`` and wait (at most ``seconds``) until every process has."""
    count = store.add(key, 1)
    deadline = time.monotonic() + seconds
    while count < world_size and time.monotonic() < deadline:
        time.sleep(0.05)
        count = store.add(key, 0)
    return count >= world_size


def _end_worker(store, rank: int, world_size: int, seconds: float) -> None:
    """
    Tear the process groups down in an order that no process can be aborted by: every process
    first waits (at most ``seconds``) until all have finished their job, so that none closes its
    connections while another still uses them; the rendezvous store's host (rank 0) then waits
    until the others have destroyed their groups, so that none finds the store gone. Without it,
    a process could end in SIGABRT (gloo or the store raising in a destructor) instead of
    reporting its job's error.
    """
    finished = _store_step(rank, _wait_for_all, store, "panoptic_ext/finished", world_size, seconds)
    if finished is False:
        logger.warning(
            "Process %d: not every process finished within %.0f s; leaving anyway", rank, seconds
        )
    forget_local_process_group()  # set by _cpu_worker: its group must not outlive the world
    try:
        dist.destroy_process_group()
    except Exception as e:  # the job's own error, if any, is what matters to the user
        logger.warning("Process %d: destroying the process group failed: %s", rank, e)
    if rank == 0:
        _store_step(rank, _wait_for_all, store, "panoptic_ext/destroyed", world_size, seconds)
    else:
        _store_step(rank, lambda s, key, *_: s.add(key, 1), store, "panoptic_ext/destroyed")


def _store_step(rank: int, step: Callable[..., Any], store, *args: Any) -> Any:
    """``step(store, *args)``; None without a store or if the store is gone (e.g. its host
    process died: the teardown goes on, the job's own error stays the one reported)."""
    if store is None:
        return None
    try:
        return step(store, *args)
    except Exception as e:
        logger.warning("Process %d: the rendezvous store is unreachable: %s", rank, e)
        return None


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_processes_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    global_rank = machine_rank * num_processes_per_machine + local_rank
    if "OMP_NUM_THREADS" not in os.environ:
        # N processes each using every core slow each other down.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes_per_machine))
    try:
        store = _rendezvous_store(dist_url, global_rank, world_size, timeout)
        dist.init_process_group(
            backend="gloo",
            init_method=None if store is not None else dist_url,
            store=store,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error("Process group URL: %s", dist_url)
        raise
    # The per-machine group that detectron2's comm.get_local_rank/size read, made as its launch
    # makes it (every process creates every group, in the same order).
    create_local_process_group(num_processes_per_machine)
    enable_cpu_ddp()
    comm.synchronize()
    try:
        main_func(*args)
    except Exception as e:
        # Said here at once, whatever happens next; torch.multiprocessing then shows the
        # traceback (the first process to fail) in the launching process.
        logger.error(
            "Process %d of %d failed: %s: %s", global_rank, world_size, type(e).__name__, e
        )
        # The others fail at the same step (e.g. the NaN guard) or are stopped by the launcher:
        # a short wait for them.
        _end_worker(store, global_rank, world_size, min(timeout.total_seconds(), _ERROR_WAIT_S))
        raise
    _end_worker(store, global_rank, world_size, timeout.total_seconds())
