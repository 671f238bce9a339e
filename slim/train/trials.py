"""What one trial of `train.search` (slim.train.search) runs, and what it asks of the cluster, on either path.

fanout: a trial is one single-process run of the normal loop (loop.fit) inside its Tune trial, which holds
`cpus_per_run` CPUs and `threads_per_run` cores; Tune runs as many at once as those fit, one after another in the
same process (reuse_actors).
ddp / deepspeed: a trial is one Ray Train run (distributed.train_distributed, the seed runs' own code) started from
its Tune trial. The trial itself holds nothing: the run's `num_workers` workers hold the CPUs (and GPUs), and Tune
starts no more trials than the cluster holds whole runs (max_concurrent_trials), so no run waits half-placed.
Rank 0 reports validation NDCG@10 after every epoch and Ray Tune's TuneReportCallback hands it to the trial, where
ASHA sees it. A trial ASHA stops ends its Tune actor and with it the Ray Train controller that actor owns (no
reuse_actors on this path: a function trial's thread cannot be stopped, only its process). The workers' placement
group outlives them: Ray removes a group when its creator and the job are both gone, and Ray Train's own cleaner
asks the dashboard's state API, which a private cluster does not start. So each report names the group and the
search's driver releases it when the trial ends (`release`); on a normal end the run has removed it already.
A trial saves no model and runs no test evaluation: its score is its best epoch's validation NDCG@10, as on the
fanout path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from slim.train.settings import METRIC, RunSettings


@dataclass(frozen=True)
class Placement:
    trainable: object  # the Tune function trainable, its parameters bound
    resources: dict  # what the Tune trial itself holds
    at_once: int  # max_concurrent_trials; 0: as many as the resources fit (Tune's own rule)
    reuse_actors: bool


def at_once(shared: RunSettings, cpus: float, cores: int, gpus: float = 0.0) -> int:
    """How many trials run at the same time on a cluster of cpus CPUs, cores cores (0: a cluster that does not
    declare them, slim.runtime.raycluster.CORES) and gpus GPUs. fanout: each trial asks cpus_per_run CPUs and
    threads_per_run cores. A Ray Train trial asks num_workers x cpus_per_run CPUs (num_workers GPUs with use_gpu)
    and keeps num_workers x threads_per_run cores busy, and one CPU stays free for the Ray Data tasks that shuffle
    each epoch's examples: trials holding every CPU would wait for their own shuffle for ever."""
    if shared.strategy == "fanout":
        n = int(cpus // shared.cpus_per_run)
        return max(1, min(n, cores // max(1, shared.threads_per_run)) if cores else n)
    n = int((cpus - 1) // (shared.cpus_per_run * shared.num_workers))
    if cores:
        n = min(n, cores // max(1, shared.threads_per_run * shared.num_workers))
    if shared.use_gpu:
        n = min(n, int(gpus // shared.num_workers))
    return max(1, n)


def placement(runs: list, d, text, ut, shared: RunSettings, scratch: str) -> Placement:
    """The trainable for the trials of runs (trial config {"i": index}) and its resources. scratch: where the Ray
    Train path's runs keep Ray Train's own files (a folder of the run directory: every node reaches it)."""
    import ray
    from ray import tune

    from slim.runtime.raycluster import CORES, cores_request

    if shared.strategy == "fanout":
        fn = tune.with_parameters(fanout_trial, runs=runs, d=d, text=text, ut=ut, valid=shared.valid_protocol)
        return Placement(fn, {"cpu": shared.cpus_per_run, **cores_request(shared.threads_per_run)}, 0, True)
    from slim.train.distributed import examples

    total = ray.cluster_resources()
    trial = dataclasses.replace(shared, test_protocols=())  # a trial is scored on validation alone
    # The examples are cut here, once: Tune runs a trial in its placement group and every Ray task the trial
    # starts would have to fit in it too (the trial holds nothing); the trials differ in nothing the examples read.
    data = examples(runs[0], d, ut, shared)
    fn = tune.with_parameters(train_trial, runs=runs, d=d, text=text, ut=ut, shared=trial, scratch=scratch,
                              data=data)
    n = at_once(shared, total.get("CPU", 1), int(total.get(CORES, 0)), total.get("GPU", 0))
    # the trial holds no CPU; Tune refuses a trial that asks nothing at all, so it asks a nominal MiB of memory
    return Placement(fn, {"cpu": 0, "memory": 1 << 20}, n, False)


def fanout_trial(config: dict, runs: list, d, text, ut, valid: str) -> None:
    """A Tune trial of the fanout path: one training run reporting its validation NDCG@10 every epoch."""
    from ray import tune

    from slim.train.loop import fit

    def report(r: dict) -> None:
        tune.report({METRIC: r["valid_ndcg10"], "loss": r["loss"], "seconds": r["seconds"]})

    fit(runs[config["i"]], d, text, valid, test_protocols=(), progress=report, ut=ut)


def train_trial(config: dict, runs: list, d, text, ut, shared: RunSettings, scratch: str, data: tuple) -> None:
    """A Tune trial of the Ray Train path: one Ray Train run whose rank 0's epoch reports reach Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from slim.train.distributed import train_distributed

    i = config["i"]
    train_distributed(runs[i], d, text, ut, f"{scratch}/trial{i}", "", shared, save=False,
                      callbacks=[TuneReportCallback()], data=data)


def release(group_hex: str) -> None:
    """Remove a finished search trial's Ray Train placement group (its id as rank 0 reported it): the CPUs (GPUs) of a
    stopped trial's workers, held until the job ends otherwise. A group already removed is left as it is."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if group_hex:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_hex))))
