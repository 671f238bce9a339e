"""The `serve` stage's entry: start Ray Serve with the app over a finished run directory and block until
interrupted. Apart from settings.py (config, token) so that the config does not import the app it configures."""

from __future__ import annotations

import logging

from slim.runtime.console import say
from slim.serve.settings import STAGE, ServeConfig  # noqa: F401 (STAGE: the face)

log = logging.getLogger(__name__)


def start(cfg: ServeConfig):
    """Start Ray (private local unless an address is given), Serve's HTTP proxy on host:port, and the app.
    Returns the app's handle once every replica is ready; a run directory without a trained model raises first."""
    from ray import serve

    from slim.runtime.raycluster import init_ray
    from slim.serve.app import build

    application = build(cfg)  # resolves the run and the token before any Ray work: errors come early
    init_ray(cfg.ray_address, cfg.num_cpus)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    handle = serve.run(application, name=cfg.app_name, route_prefix=cfg.route_prefix)
    log.info("serving at http://%s:%d%s", cfg.host, cfg.port, cfg.route_prefix)
    return handle


def swap_in(cfg: ServeConfig) -> str:
    """serve.swap: the run cfg picks, into the app already serving at cfg.host:cfg.port, in place (slim/serve/swap.py);
    -> its label. The endpoint, the run and the token are found before any Ray work: errors come early."""
    from slim.serve.swap import endpoint, swap

    where = endpoint(cfg)  # first: no endpoint is an error in a second, before the app's imports
    from slim.serve.app import labelled

    application, want = labelled(cfg)  # the run picked and its weights hashed once
    swap(cfg, where, application, want)
    return want


def run(cfg: ServeConfig, force: bool = False):
    """The stage entry: start the app and block until interrupted, or with serve.swap update the running app in
    place and return (force has nothing to redo here)."""
    import time

    from slim.runtime.raycluster import cluster_address
    from slim.serve import swap

    try:
        if cfg.swap:
            swap_in(cfg)
            return
        start(cfg)
    except Exception as e:
        if not _user_error(e):
            raise
        say(f"serve: {e}", err=True)
        raise SystemExit(2)
    private = not cluster_address(cfg.ray_address)
    swap.record(cfg, private)  # where a later `--swap` finds this Ray
    say(f"serving http://{cfg.host}:{cfg.port}{cfg.route_prefix} (Ctrl-C stops; a newly trained run goes in "
        "without a gap: the same command with --swap)")
    try:
        while True:
            time.sleep(3600)
    finally:  # Ctrl-C or SIGTERM (slim.runtime.signals.Stopped)
        swap.forget(cfg)
        if not private:
            from ray import serve

            serve.shutdown()  # a cluster that keeps running: take the app off it
        # A private cluster goes whole with the job (slim.runtime.signals ends its processes): 1-2 s, where
        # serve.shutdown's graceful drain of every replica and proxy took 7-9 s first.


def _user_error(e: Exception) -> bool:
    """No endpoint to swap into, a run directory without a trained model, no student for generation: one line."""
    from slim.serve.swap import SwapError

    if isinstance(e, SwapError):  # before the imports below: a swap with nothing serving fails in a second
        return True
    from slim.serve.model import NoModelError
    from slim.student.public import StudentModelError

    return isinstance(e, (NoModelError, StudentModelError))


# The stage's face (slim/runner/face.py). Serve runs only when named, writes nothing and has no manifest: it reads
# no stage's output (a trained run, found by plan_line: the train stage's manifest is not needed to serve one) and
# fingerprints nothing, so the face's defaults stand for reads, stage_config, own_inputs and resources.
CONFIG = ServeConfig
WRITES = ()


def plan_line(cfg: ServeConfig, wanted: list, problems: list) -> str:
    """What --check says: the run it would serve, which must exist unless train runs first (is in `wanted`)."""
    from slim.io import columns as C
    from slim.serve.model import NoModelError, pick_run

    training = C.TRAIN_DIR in wanted
    what = "swaps {} into the app at http://{}:{}{}" if cfg.swap else "serves {} until interrupted"
    try:
        return what.format(pick_run(cfg.run_dir, cfg.backbone, cfg.variant, cfg.seed), cfg.host, cfg.port,
                           cfg.route_prefix)
    except NoModelError as e:
        if not training:
            problems.append(f"serve: {e}")
        return "serves the best run train writes" if training else "no trained model to serve"

