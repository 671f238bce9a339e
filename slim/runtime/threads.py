"""Torch's thread count from the CPUs a process was given, in one place: every Ray task and actor that computes
with torch (training runs, Ray Train workers, encoder actors, Serve replicas, ranking blocks) and the drivers that
compute themselves (evaluate's ranking of a single block, explain).

Left alone, torch starts one thread per core of the machine whatever the process was given. Ray's
OMP_NUM_THREADS does not fix that: it is set once per worker process, from the first task that process runs, and a
worker is reused by tasks of other sizes. On a shared 2-core machine two threads per process are worse than one
(issue 42: a forced evaluate of the demo run took 92 s with the driver ranking on two threads, 15 s with one):
every parallel region waits at its barrier for a thread that another process holds off the core.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Optional

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; os.cpu_count() where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def assigned_cores() -> Optional[int]:
    """Inside a Ray task or actor: the cores Ray assigned it, at least 1. The real cores it reserved
    (slim.runtime.raycluster.CORES, see cores_request) where it asked for them, else the floor of its CPUs (a
    fractional CPU, or an actor that asked for none: 1). None in a driver, or where Ray is not running."""
    if "ray" not in sys.modules:  # never imported: not a Ray worker, and a driver without Ray stays light
        return None
    import ray

    from slim.runtime.raycluster import CORES

    if not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    if ctx.worker.mode != ray._private.worker.WORKER_MODE:  # a driver: Ray assigns it nothing
        return None
    got = ctx.get_assigned_resources()
    n = got.get(CORES) or got.get("CPU") or 1
    return max(1, math.floor(n))


def thread_count(requested: int = 0, driver: int = 1) -> int:
    """How many torch threads: `requested` when positive (a config's explicit count); else the cores Ray assigned
    this task or actor; else, in a driver, `driver`. Never more than the cores this process may run on."""
    n = requested if requested > 0 else (assigned_cores() or max(1, driver))
    return min(n, usable_cores())


def actor_threads(requested: int, cpus: float) -> int:
    """An actor's torch threads, known before it starts: `requested` when positive, else the floor of the CPUs it
    asks Ray for (at least 1: what assigned_cores finds inside it); never more than the cores here. Whoever sizes
    an actor and whoever names its thread count (a key of what it computes) use this one rule, so they agree."""
    n = requested if requested > 0 else max(1, math.floor(cpus))
    return min(n, usable_cores())


def torch_threads(requested: int = 0, driver: int = 1) -> int:
    """Set torch's intra-op threads (and, while torch still allows it, its inter-op threads) to `thread_count`;
    returns the count. Call it in the task, actor or driver that computes, before the work."""
    import torch

    n = thread_count(requested, driver)
    torch.set_num_threads(n)
    try:  # allowed once per process, before any inter-op work; a reused Ray worker has set it already
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass
    log.debug("torch threads: %d (requested %d)", n, requested)
    return n
