"""Connect to Ray: a given address (or RAY_ADDRESS, set by `ray job submit`), else a private local cluster; read
Parquet into a pipeline that streams in small blocks within a memory budget; and the runtime_env of the actors
that do a stage's work."""

from __future__ import annotations

import copy
import logging
import os

from slim.runtime import console

log = logging.getLogger(__name__)

# Ray starts every worker process at niceness 15, so that raylet and GCS win the CPU from it. An actor that does
# the stage's work (a vLLM engine, whose EngineCore and model worker are forked from the actor and inherit its
# niceness; a generate or encode actor) then loses each time slice to the driver and every other nice-0 process:
# on 2 cores a 192-user student job took 557 s that way and 367 s without (bench/results/student.md). Such actors
# run at 0, as the same work started by hand would; the rest of the pipeline stays at 15 and yields to them.
# Ray's job manager sets the same variable to run job drivers at 0.
WORK_ACTOR_ENV = {"RAY_worker_niceness": "0"}

# The local cluster declares more logical CPUs than the machine has cores (see init_ray), so Ray's CPU accounting
# alone would run 2 x cores single-threaded training runs at once. It also declares this resource, one unit per
# real core; CPU-bound tasks ask for one unit per thread they run (`cores_request`), so they never share a core.
CORES = "slim_cores"


def work_actor_env(extra: dict | None = None) -> dict:
    """runtime_env for an actor that does a stage's work: its env_vars (plus `extra`) at the driver's priority."""
    return {"env_vars": {**WORK_ACTOR_ENV, **(extra or {})}}


def cluster_address(address: str | None = None) -> str | None:
    """The cluster a job joins: the configured address, else RAY_ADDRESS (set by `ray job submit` to the cluster's
    GCS address in the driver's environment), else None: a private local cluster."""
    return address or os.environ.get("RAY_ADDRESS") or None


def submitted_job() -> bool:
    """True in the driver of a `ray job submit` job (Ray's job supervisor passes the job's config in this variable)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    console.quiet_ray()  # Ray's loggers first: ray.init logs too
    address = cluster_address(address)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        # An existing cluster has its own resources: ray.init(num_cpus=...) raises when joining one.
        if num_cpus:
            log.info("num_cpus=%s ignored: joining the cluster at %s", num_cpus, address)
        ray.init(address=address, log_to_driver=True)
        console.quiet_ray()
        console.say(f"joined Ray cluster at {address}: {ray.cluster_resources()}")
        return
    # More logical CPUs than cores: on 2 cores an actor pool holding whole CPUs starves the read tasks.
    n = num_cpus or max(4, 2 * (os.cpu_count() or 2))
    cores = os.cpu_count() or 1
    ray.init(address="local", num_cpus=n, resources={CORES: cores}, include_dashboard=False, log_to_driver=True)
    console.quiet_ray()  # worker output reaches the driver, then the stage log (the console with --verbose)
    log.info("started a local Ray cluster with %d logical CPUs on %d cores", n, cores)


def server_host(setting: str, address: str | None = None) -> str:
    """The address a server this driver starts binds to and is called at. "auto": loopback when the job runs on
    a private local cluster (every actor is on this machine), else this node's address as Ray knows it, so that
    actors on other nodes can reach it (Ray must be initialised). Anything else is used as given."""
    if setting != "auto":
        return setting
    if not cluster_address(address):
        return "127.0.0.1"
    import ray

    return ray.util.get_node_ip_address()


def cores_request(threads: int) -> dict:
    """`resources=` for a task that keeps `threads` threads busy: that many real cores where the cluster declares
    them (the local one, cluster/start_local.sh), nothing on other clusters, whose CPU resources are real cores."""
    import ray

    total = ray.cluster_resources().get(CORES, 0)
    return {CORES: min(max(1, threads), total)} if total else {}


def read_parquet(paths, columns: list[str], block_kib: int, object_store_mib: int = 0):
    """`ray.data.read_parquet` for a pipeline that streams in small blocks within a fixed object-store budget.

    Blocks of about `block_kib` KiB instead of Ray Data's 128 MiB default, so every operator after it streams at
    that grain: a task's output reaches the driver while the task still runs, and memory follows the block, not
    the input file. `object_store_mib` (0: Ray Data's default, half of the cluster's object store) caps the
    object-store memory the whole pipeline may hold: reading runs ahead of the slow actors (encoder, engine) only
    until queued blocks fill it, then waits. Without the cap a 150,000-user encode read all its input into the
    store within the first minute (bench/results/encode_scale.md), so memory followed the number of users up to
    half the store. A Dataset seals the DataContext when it is created, so both settings apply to this pipeline
    (and the operators chained on it) only."""
    import ray

    ctx = ray.data.DataContext.get_current()
    default, ctx.target_max_block_size = ctx.target_max_block_size, block_kib * 1024
    options = ctx.execution_options
    if object_store_mib:
        ctx.execution_options = copy.deepcopy(options)
        limits = ctx.execution_options.resource_limits
        ctx.execution_options.resource_limits = limits.copy(object_store_memory=object_store_mib * 2**20)
    from slim.io import storage

    paths, fs = storage.ray_paths(paths)  # URIs: with the filesystem slim.io.storage builds from the environment
    try:
        return ray.data.read_parquet(paths, columns=columns, filesystem=fs)
    finally:
        ctx.target_max_block_size, ctx.execution_options = default, options
