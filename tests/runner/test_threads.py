"""Torch threads from the CPUs a task, actor or driver was given (slim.runtime.threads), on the session's local Ray:
a reused worker left at another count is set back to what this task reserved."""

import os

import pytest

from slim.runtime import threads as T


def test_tasks_and_actors_get_the_cores_they_reserved(ray_local):
    ray = ray_local

    def _probe(before: int, requested: int = 0) -> tuple:
        """In a task: torch left at `before` threads (a worker reused from a bigger task), then torch_threads.
        Defined here: Ray's workers cannot import a test module."""
        import torch

        from slim.runtime.threads import assigned_cores, torch_threads

        torch.set_num_threads(before)
        got = torch_threads(requested)
        return assigned_cores(), got, torch.get_num_threads()

    from slim.runtime.raycluster import CORES, cores_request

    cores = min(2, int(ray.cluster_resources()[CORES]))  # the cores a task asking for two gets here
    two = min(cores, T.usable_cores())
    task = ray.remote(_probe)
    assert ray.get(task.options(num_cpus=1, resources=cores_request(1)).remote(2)) == (1, 1, 1)
    assert ray.get(task.options(num_cpus=0.5).remote(2)) == (1, 1, 1)  # a fractional CPU: one thread
    assert ray.get(task.options(num_cpus=1, resources=cores_request(2)).remote(1)) == (cores, two, two)
    explicit = min(3, T.usable_cores())  # a config's count wins over the reservation, capped at the cores
    assert ray.get(task.options(num_cpus=1, resources=cores_request(1)).remote(1, 3)) == (1, explicit, explicit)

    @ray.remote(num_cpus=0.25)
    class Replica:  # a Serve replica or an encoder actor: fractional CPUs
        def probe(self):
            return _probe(2)

    assert ray.get(Replica.remote().probe.remote()) == (1, 1, 1)


def test_a_driver_gets_its_configured_count_capped_at_its_cores():
    import torch

    before = torch.get_num_threads()
    try:
        assert T.assigned_cores() is None  # this process is a driver, whether or not Ray is up
        assert T.torch_threads() == 1 == torch.get_num_threads()
        assert T.torch_threads(0, driver=3) == min(3, T.usable_cores())
        assert T.torch_threads(10_000) == T.usable_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_usable_cores_follow_the_affinity():
    keep = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(keep)})
        assert T.usable_cores() == 1 and T.thread_count(4) == 1
    finally:
        os.sched_setaffinity(0, keep)
    assert T.usable_cores() == len(keep)
