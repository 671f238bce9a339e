"""The `serve` stage's entry: start Ray Serve with the app over a finished run directory and block until
interrupted. Apart from settings.py (config, token) so that the config does not import the app it configures."""

from __future__ import annotations

import logging

from slim.runtime.console import say
from slim.serve.settings import STAGE, ServeConfig, check  # noqa: F401 (STAGE: the face)

log = logging.getLogger(__name__)


def start(cfg: ServeConfig):
    """Start Ray (private local unless an address is given), Serve's HTTP proxy on host:port, and the app.
    Returns the app's handle once every replica is ready; a run directory without a trained model raises first."""
    from ray import serve

    from slim.runtime.raycluster import init_ray
    from slim.serve.app import build

    check(cfg)
    application = build(cfg)  # resolves the run and the token before any Ray work: errors come early
    init_ray(cfg.ray_address, cfg.num_cpus)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    handle = serve.run(application, name=cfg.app_name, route_prefix=cfg.route_prefix)
    log.info("serving at http://%s:%d%s", cfg.host, cfg.port, cfg.route_prefix)
    return handle


def run(cfg: ServeConfig, force: bool = False):
    """The stage entry: start the app and block until interrupted (force has nothing to redo here)."""
    import time

    from ray import serve

    from slim.runtime.raycluster import cluster_address
    from slim.serve.model import NoModelError
    from slim.student.engines import StudentModelError

    try:
        start(cfg)
    except (NoModelError, StudentModelError) as e:
        say(f"serve: {e}", err=True)
        raise SystemExit(2)
    say(f"serving http://{cfg.host}:{cfg.port}{cfg.route_prefix} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    finally:  # Ctrl-C or SIGTERM (slim.runtime.signals.Stopped)
        if cluster_address(cfg.ray_address):
            serve.shutdown()  # a cluster that keeps running: take the app off it
        # A private cluster goes whole with the job (slim.runtime.signals ends its processes): 1-2 s, where
        # serve.shutdown's graceful drain of every replica and proxy took 7-9 s first.


# The stage's face (slim/runner/stages.py). Serve runs only when named, writes nothing and has no manifest.
CONFIG = ServeConfig
WRITES = ()


def reads(cfg: ServeConfig) -> list[str]:
    return []  # a trained run, found by plan_line (the train stage's manifest is not needed to serve one)


def stage_config(cfg: ServeConfig) -> dict:
    return {}  # nothing to fingerprint: serving writes nothing


def own_inputs(cfg: ServeConfig, root=None) -> dict:
    return {}


def resources(cfg: ServeConfig, problems: list) -> list[str]:
    return []


def plan_line(cfg: ServeConfig, training: bool, problems: list) -> str:
    """What --check says: the run it would serve, which must exist unless train runs first."""
    from slim.serve.model import NoModelError, pick_run

    try:
        return f"serves {pick_run(cfg.run_dir, cfg.backbone, cfg.variant, cfg.seed)} until interrupted"
    except NoModelError as e:
        if not training:
            problems.append(f"serve: {e}")
        return "serves the best run train writes" if training else "no trained model to serve"

