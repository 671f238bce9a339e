"""Swapping a newly trained run into a running endpoint, in place: `jobs/serve.py --config C serve.variant=... --swap`.

Ray Serve's own in-place update: `serve.run` again with the application's name and route prefix, on the Ray that
runs it. The HTTP proxy keeps the route throughout; with serve.max_surge_percent > 0 the new replicas start beside
the old ones, which keep answering until the new ones are ready and then drain (graceful shutdown) before they stop,
so no request is refused or dropped. A swap returns once the endpoint answers with the new run.

Which Ray: serve.ray_address / RAY_ADDRESS (an endpoint on a cluster), else the private Ray of the `jobs/serve.py`
that listens on serve.host:serve.port, found through the record it writes at start (`record`; removed when it
stops). Every answer names its model, `<run>@<checkpoint>` (slim/serve/app.py), so the switch can be seen.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

from slim.runtime.console import say
from slim.serve.settings import ServeConfig

log = logging.getLogger(__name__)

# A swap waits this long for the endpoint to answer with the new run after Serve reported the app running
ANSWER_WAIT_S = 60.0


class SwapError(RuntimeError):
    """No endpoint to swap into, or it never answered with the new run; the message says which and what to do."""


def record_path(cfg: ServeConfig) -> Path:
    """Where the job serving on cfg.host:cfg.port records its Ray: this machine's scratch folder (never the run
    directory, which serving does not write)."""
    from slim.io import storage

    return storage.scratch("serve") / f"{cfg.host}-{cfg.port}.json"


def record(cfg: ServeConfig, private: bool) -> Path:
    """Record the Ray this process serves cfg's app on, for a later `--swap`; -> the record's path."""
    import ray

    from slim.io import atomic

    p = record_path(cfg)
    atomic.write_json(p, {"ray_address": ray.get_runtime_context().gcs_address, "pid": os.getpid(),
                          "private": private, "app": cfg.app_name, "route_prefix": cfg.route_prefix})
    return p


def forget(cfg: ServeConfig) -> None:
    """Remove this process's record (a record another job wrote since stays)."""
    p = record_path(cfg)
    try:
        if json.loads(p.read_text()).get("pid") == os.getpid():
            p.unlink()
    except (OSError, ValueError):
        pass


def endpoint(cfg: ServeConfig) -> dict:
    """{ray_address, private (a job's private Ray), route_prefix (None: not known)} of the Ray that runs the
    endpoint."""
    from slim.runtime.raycluster import cluster_address

    given = cluster_address(cfg.ray_address)
    if given:
        return {"ray_address": given, "private": False, "route_prefix": None}
    where = f"http://{cfg.host}:{cfg.port}"
    p = record_path(cfg)
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        raise SwapError(f"no jobs/serve.py serves {where} on this machine ({p} not found): start one first "
                        "(without --swap), or name the cluster that runs the endpoint (RAY_ADDRESS / ray_address)"
                        ) from None
    if not (_alive(rec.get("pid")) and _listening(cfg.host, cfg.port)):  # a reused pid alone is no endpoint
        raise SwapError(f"the jobs/serve.py that served {where} (pid {rec.get('pid')}) is gone: start one first "
                        "(without --swap)")
    return {"ray_address": rec["ray_address"], "private": bool(rec.get("private")),
            "route_prefix": rec.get("route_prefix") if rec.get("app") == cfg.app_name else None}


def _listening(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def model_label(model_dir) -> str:
    """`<run>@<checkpoint>`: the run's name and the first 16 hex digits of its weights' SHA-256 (a run retrained
    under the same name gets a new label). Every answer names the model it came from so. Hashes the weights:
    computed once per build (slim.serve.app.labelled), not per replica or poll."""
    from slim.io import storage
    from slim.io.rundir import content_fingerprint
    from slim.recsys.checkpoint import WEIGHTS

    p = storage.path(model_dir)
    return f"{p.name}@{content_fingerprint(p / WEIGHTS)}"


def swap(cfg: ServeConfig, where: dict, application, want: str) -> None:
    """Update the app cfg.app_name at cfg.route_prefix on the Ray `where` says (endpoint) in place to `application`
    (slim.serve.app.build(cfg)), whose answers name `want` (model_label); returns once the endpoint answers with it."""
    import ray
    from ray import serve

    from slim.runtime.raycluster import init_ray

    if ray.is_initialized() and ray.get_runtime_context().gcs_address != where["ray_address"]:
        ray.shutdown()  # a pipeline's own Ray (train ran on it): the endpoint runs on another
    init_ray(where["ray_address"], private_job=where["private"])
    with _Probe(cfg) as served:
        before = _running(cfg, where, served)
        t0 = time.monotonic()
        serve.run(application, name=cfg.app_name, route_prefix=cfg.route_prefix)  # returns once the app is RUNNING
        _wait_for(cfg, want, served)
    say(f"serve: {cfg.app_name} at http://{cfg.host}:{cfg.port}{cfg.route_prefix} serves {want} "
        f"(was {before or 'unknown'}; swapped in {time.monotonic() - t0:.1f} s)")


def _running(cfg: ServeConfig, where: dict, served: "_Probe") -> Optional[str]:
    """The app must run, at the same route prefix where that is known (a swap keeps the route); -> the model it
    serves now, if it says."""
    from ray import serve

    apps = serve.status().applications
    if cfg.app_name not in apps:
        raise SwapError(f"no Serve application {cfg.app_name!r} on the Ray at {where['ray_address']} (running: "
                        f"{', '.join(apps) or 'none'}): set serve.app_name, or start it without --swap")
    prefix = where["route_prefix"]
    if prefix is not None and prefix != cfg.route_prefix:
        raise SwapError(f"application {cfg.app_name!r} answers at {prefix}, not serve.route_prefix "
                        f"{cfg.route_prefix}: a swap keeps the route (set serve.route_prefix={prefix})")
    return served()


class _Probe:
    """The model the endpoint names in its answer to /healthz (the X-Slim-Model header), None when it does not.
    One HTTP client, its URL and headers made once for every poll of a swap (a context manager: closes it)."""

    def __init__(self, cfg: ServeConfig):
        import httpx

        from slim.serve.settings import read_token

        # the same variable the app read its token from (read_token has checked it is set)
        headers = {"Authorization": f"Bearer {os.environ[cfg.auth_token_env]}"} if read_token(cfg) else {}
        self.url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}/healthz"
        self.client = httpx.Client(headers=headers, timeout=10)

    def __call__(self) -> Optional[str]:
        import httpx

        try:
            return self.client.get(self.url).headers.get("x-slim-model")
        except httpx.HTTPError:
            return None

    def __enter__(self) -> "_Probe":
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()


def _wait_for(cfg: ServeConfig, want: str, served: _Probe, in_a_row: int = 5) -> None:
    """Until the endpoint's answers name `want`, `in_a_row` times running: the old replicas stop taking requests
    once the new ones are ready, then drain."""
    deadline, seen = time.monotonic() + ANSWER_WAIT_S, 0
    while time.monotonic() < deadline and seen < in_a_row:
        seen = seen + 1 if served() == want else 0
        time.sleep(0.1)
    if seen < in_a_row:
        raise SwapError(f"Serve updated {cfg.app_name!r}, but http://{cfg.host}:{cfg.port}{cfg.route_prefix} did "
                        f"not answer with {want} within {ANSWER_WAIT_S:g} s: see `serve status`")
