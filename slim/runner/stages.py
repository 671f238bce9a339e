"""The explicit stage registry, in pipeline order: name -> the stage's module, its face.

Every stage module shows the same face (slim/runner/face.py: the StageFace Protocol, and the defaults for what a
stage leaves out), and --check, the planner, the manifests and the "run X first" messages read only that
(slim/runner/check.py has no per-stage branch): CONFIG, run, STAGE, WRITES; reads, stage_config, own_inputs,
resources; check, plan_line (on-demand stages), on_force, closing.
Each stage's module is imported only when used, so `import slim.runner.stages` stays light.
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Callable

from slim.io.columns import STAGE_DIRS
from slim.runner.face import Face, StageFace

# Stages the pipeline runs only when named: `serve` starts a server that runs until interrupted (and writes no
# run-directory folder).
ON_DEMAND = ("serve",)

# The pipeline's order: the stages' run-directory folders, which are their names (slim.io.columns.STAGE_DIRS, the one
# list of stage names), then the on-demand ones. Every stage is the package of its name and shows its face in
# stage.py. `.importlinter`'s layers, which cannot be derived, are checked against this (tests/runner/test_stage_face.py).
ORDER = (*STAGE_DIRS, *ON_DEMAND)

# name -> its module, imported only when its face is asked for
MODULES: dict[str, str] = {n: f"slim.{n}.stage" for n in ORDER}


def closing(stage: str, cfg: Any) -> list[str]:
    """What a finished stage says last on the console (its face's `closing`: evaluate's headline)."""
    return face(stage).closing(cfg)


def face(stage: str) -> StageFace:
    """The stage's module seen through the StageFace Protocol (its own members, else the defaults)."""
    return Face(importlib.import_module(MODULES[stage]))


# Run directories from before 0.2 used other folder names: slim.runner.migrate renames them, and every stage
# refuses them.

# name -> (config class, run function), from each face
REGISTRY: dict[str, Callable[[], tuple[type, Callable]]] = {
    n: (lambda n=n: (face(n).CONFIG, face(n).run)) for n in MODULES}


# Top-level keys of the pipeline itself (no section reads them), and what they mean: docs/config.md lists them.
PIPELINE_KEYS = {
    "stages": "the stages `jobs/pipeline.py` (and its `--check`) runs, in pipeline order, e.g. [data, encode, "
              "train, evaluate]; --stages wins; unset = every stage but serve",
}


def names() -> list[str]:
    return list(ORDER)


def default_names() -> list[str]:
    """What `jobs/pipeline.py` runs without --stages."""
    return [n for n in names() if n not in ON_DEMAND]


def load(stage: str, raw: dict) -> Any:
    from slim.runtime import config

    if stage not in REGISTRY:
        raise config.ConfigError(f"unknown stage {stage!r}; stages: {', '.join(REGISTRY)}")
    cls, _ = REGISTRY[stage]()
    return config.section(raw, stage, cls)


def log_dir(cfgs: dict) -> str:
    """Where the stages of these configs write their logs (slim.runtime.console.stage_log)."""
    run_dir = next((getattr(c, "run_dir", "") for c in cfgs.values() if getattr(c, "run_dir", "")), "")
    return f"{str(run_dir).rstrip('/')}/logs/"


def run(stage: str, cfg: Any, force: bool = False):
    from slim.runtime import console

    _, fn = REGISTRY[stage]()
    if force and not getattr(cfg, "dry_run", False):  # a teacher dry run writes nothing, so drops nothing
        force = _drop_for_force(stage, cfg)
    run_dir, started = getattr(cfg, "run_dir", ""), time.time()
    if not run_dir:
        return fn(cfg, force=force)
    with console.stage_log(stage, run_dir):  # the libraries' logs: <run_dir>/logs/<stage>.log
        m = fn(cfg, force=force)
        if skipped(m, started):
            console.say(f"{stage}: manifest matches, skipping (use --force to rerun)")
    return m


def skipped(m: Any, started: float) -> bool:
    """A stage whose manifest matched returns that older manifest instead of writing one (time.time() seconds)."""
    return getattr(m, "created", started) < started


def _drop_for_force(stage: str, cfg: Any) -> bool:
    """--force, before the stage writes anything: its manifest goes, so a forced run stopped midway is not taken
    for finished by the next plain run (which resumes it instead). For train every run's metrics.json goes too and
    the stage then runs as a plain one: a stopped forced train resumes with the plain command, keeping the runs it
    retrained and training the rest. -> the force flag to pass on to the stage."""
    from slim.io.rundir import RunDir

    f = face(stage)
    if not f.WRITES:
        return True
    rd = RunDir(cfg.run_dir)
    rd.invalidate(f.STAGE)
    return f.on_force(rd)


def load_all(raw: dict) -> dict[str, Any]:
    """Every stage config in a file; unknown top-level sections are an error."""
    from slim.runtime import config

    unknown = sorted(set(raw) - set(REGISTRY) - set(config.SHARED_KEYS) - set(PIPELINE_KEYS))
    if unknown:
        raise config.ConfigError(
            f"unknown section(s) {', '.join(unknown)}; sections: {', '.join(REGISTRY)}; "
            f"shared keys: {', '.join((*config.SHARED_KEYS, *PIPELINE_KEYS))}"
        )
    return {name: load(name, raw) for name in REGISTRY}
