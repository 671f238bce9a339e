"""Connect to Ray: a given address (or RAY_ADDRESS, set by `ray job submit`), else a private local cluster; read
Parquet into a pipeline that streams in small blocks within a memory budget; and the runtime_env of the actors
that do a stage's work."""

from __future__ import annotations

import contextlib
import copy
import ipaddress
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

# The address a private local cluster binds to (bind_host); the config's top-level `ray_host` sets it.
RAY_HOST_ENV = "SLIM_RAY_HOST"
# Tries of a local start that timed out ("The current node timed out during startup": Ray's fixed 30 s for the raylet
# to register, missed twice in a row at a load average of 60-77 on 2 cores while other Ray jobs started)
START_ATTEMPTS = 3


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


def local_cpus(num_cpus: int | None = None) -> int:
    """The logical CPUs a private local cluster declares: more than the cores (see init_ray), unless configured."""
    return num_cpus or max(4, 2 * (os.cpu_count() or 2))


def init_ray(address: str | None = None, num_cpus: int | None = None, private_job: bool = False) -> None:
    """private_job: the address is another job's private local cluster (a serve swap joins one): join it with that
    cluster's job runtime_env, so that actors started from here bind as its own do (worker_setup)."""
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
        extra = {"runtime_env": dict(LOCAL_JOB_ENV), "_node_ip_address": bind_host()} if private_job else {}
        _ray_init(f"join the Ray cluster at {address}", address=address, log_to_driver=True, **extra)
        console.quiet_ray()
        console.say(f"joined Ray cluster at {address}: {ray.cluster_resources()}")
        return
    # More logical CPUs than cores: on 2 cores an actor pool holding whole CPUs starves the read tasks.
    n = local_cpus(num_cpus)
    cores = os.cpu_count() or 1
    host = bind_host()
    _ray_init(f"start a local Ray cluster on {host}", address="local", num_cpus=n, resources={CORES: cores},
              include_dashboard=False, log_to_driver=True, _node_ip_address=host, dashboard_host=host,
              runtime_env=dict(LOCAL_JOB_ENV))
    console.quiet_ray()  # worker output reaches the driver, then the stage log (the console with --verbose)
    log.info("started a local Ray cluster with %d logical CPUs on %d cores, bound to %s", n, cores, host)


def bind_host() -> str:
    """The address a private local cluster binds every listener to: RAY_HOST_ENV (set from the config's top-level
    `ray_host` by the job's entry point), default 127.0.0.1.

    Ray binds its GCS, raylet, object manager, agents and workers to the node IP, and the client server and
    dashboard to their own hosts; by default it turns 127.0.0.1 into the machine's network address
    (services.resolve_ip_for_localhost) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is 0, its single-machine mode.
    That mode is set here both in this process (Ray read the variable when it was imported) and in the
    environment the daemons inherit. Seen with psutil (tests/cluster/test_loopback.py): without it, the GCS, raylet and
    workers listened on `::` and the dashboard agent on the external address."""
    host = _checked_host(os.environ.get(RAY_HOST_ENV) or "127.0.0.1", RAY_HOST_ENV)
    if ipaddress.ip_address(host).is_loopback:
        from ray._private import ray_constants

        os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
    return host


def worker_setup() -> None:
    """Ray's worker_process_setup_hook on a private local cluster, run in every worker before its first task.

    A Serve replica starts its inter-deployment gRPC server on "[::]:0", every interface, whatever the node's
    address (ray.serve._private.replica, Ray 2.60; no setting changes it): the address it asks for is made the
    bind host (the replica imports the helper after this runs). Other wildcard-free addresses pass unchanged."""
    from ray._common import tls_utils

    host = bind_host()
    original = tls_utils.add_port_to_grpc_server

    def on_bind_host(server, address: str):
        if address.startswith(("[::]:", "0.0.0.0:")):
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    tls_utils.add_port_to_grpc_server = on_bind_host


# The job runtime_env of a private local cluster: every worker binds as worker_setup says
LOCAL_JOB_ENV = {"worker_process_setup_hook": f"{__name__}.{worker_setup.__name__}"}


def set_bind_host(value) -> None:
    """The config's top-level `ray_host` (None: keep RAY_HOST_ENV or the default) -> RAY_HOST_ENV, checked."""
    if value is not None:
        os.environ[RAY_HOST_ENV] = _checked_host(value, "ray_host")


def _checked_host(value, where: str) -> str:
    from slim.runtime.config import ConfigError

    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an IP address of this machine (e.g. 127.0.0.1, the "
                          "default)") from None
    if ip.is_unspecified:
        raise ConfigError(f"{where}: {value} is not one address; Ray binds to the node's address: name it")
    return str(ip)


def _ray_init(what: str, **kwargs) -> None:
    """ray.init; a failure -> RayStartError: one line with the cause and what to try (slim.runtime.signals)."""
    import ray

    from slim.runtime.signals import RayStartError, children, keep_handlers

    before = {p.pid for p in children()}
    try:
        with keep_handlers():  # ray.init replaces SIGTERM's handler with its own sys.exit
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    ray.init(**kwargs)
                    break
                except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception ("timed out during startup")
                    # Ray gives the raylet a fixed 30 s to register; a loaded machine can miss it: try again
                    if (kwargs.get("address") != "local" or "timed out during startup" not in str(e)
                            or attempt == START_ATTEMPTS):
                        raise
                    log.warning("Ray did not start in time (%s); trying again (%d of %d)", e, attempt + 1,
                                START_ATTEMPTS)
                    _end_started(ray, before)
    except Exception as e:  # noqa: BLE001
        _end_started(ray, before)
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        cause = lines[0] if lines else type(e).__name__
        if "Traceback" in str(e):  # Ray puts the last connection attempt's traceback in the message: its last line
            cause += f" ({lines[-1]})"
        cause = cause[:400]
        hint = ("check that the cluster runs and the address (ray_address or RAY_ADDRESS) is right, e.g. "
                "`ray status --address ...`" if kwargs.get("address") != "local" else
                "a busy machine can miss Ray's start-up deadline: rerun; free memory and disk under /tmp, or join "
                "a running cluster with RAY_ADDRESS")
        raise RayStartError(f"could not {what}: {cause}; {hint}") from None


def _end_started(ray, before: set) -> None:
    """What a failed ray.init left running: its Node never became Ray's global one, so ray.shutdown alone misses
    the GCS and raylet it started; they are the processes started since `before`."""
    from slim.runtime.signals import children, end_processes

    with contextlib.suppress(Exception):
        ray.shutdown()
    end_processes([p for p in children() if p.pid not in before])


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
