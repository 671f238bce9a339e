"""The explicit stage registry, in pipeline order: name -> the stage's module, its face.

Every stage module exposes the same small interface, and --check, the planner, the manifests and the "run X first"
messages read only that (slim/runner/check.py has no per-stage branch):
- CONFIG (its frozen config dataclass) and run(cfg, force) -> Manifest;
- STAGE (its name, which is its run-directory folder) and WRITES (that folder and any product folder beside it);
- reads(cfg) -> the upstream stages whose output it reads;
- stage_config(cfg) and own_inputs(cfg, root): what its manifest fingerprints (config; files that are inputs);
- resources(cfg, problems) -> what --check says about its models and input files;
- optional: check(cfg) (a constraint on its own config, before any stage runs), plan_line (on-demand stages),
  on_force(rd) (what --force clears beside its folder), closing(cfg) (lines said after it ran: evaluate's headline).
Each entry imports its module only when used, so `import slim.runner.stages` stays light.
"""

from __future__ import annotations

import importlib
import time
from types import ModuleType
from typing import Any, Callable


# name -> its module. Every stage is the package of its name and shows its face in stage.py; a module is imported
# only when its face is asked for, so `import slim.runner.stages` stays light.
MODULES: dict[str, str] = {
    "data": "slim.data.stage", "teacher": "slim.teacher.stage", "distill": "slim.distill.stage",
    "student": "slim.student.stage", "encode": "slim.encode.stage", "train": "slim.train.stage",
    "evaluate": "slim.evaluate.stage", "serve": "slim.serve.stage",
}


def closing(stage: str, cfg: Any) -> list[str]:
    """What a finished stage says last on the console (its face's optional `closing`: evaluate's headline)."""
    f = face(stage)
    return f.closing(cfg) if hasattr(f, "closing") else []


def face(stage: str) -> ModuleType:
    """The stage's module: CONFIG, run, STAGE, WRITES, reads, stage_config, own_inputs, resources (see above)."""
    return importlib.import_module(MODULES[stage])


# A stage writes its manifest in the run-directory folder of its name (slim.io.columns.STAGE_DIRS; serve writes none).
# Run directories from before 0.2 used other folder names: slim.runner.migrate renames them, and every stage refuses them.

# name -> (config class, run function), from each face
REGISTRY: dict[str, Callable[[], tuple[type, Callable]]] = {
    n: (lambda n=n: (face(n).CONFIG, face(n).run)) for n in MODULES}


# The pipeline's order; a stage appears here once it is registered above.
ORDER = ("data", "teacher", "distill", "student", "encode", "train", "evaluate", "serve")


# Stages the pipeline runs only when named: `serve` starts a server that runs until interrupted.
ON_DEMAND = ("serve",)


# Top-level keys of the pipeline itself (no section reads them), and what they mean: docs/config.md lists them.
PIPELINE_KEYS = {
    "stages": "the stages `jobs/pipeline.py` (and its `--check`) runs, in pipeline order, e.g. [data, encode, "
              "train, evaluate]; --stages wins; unset = every stage but serve",
}


def names() -> list[str]:
    return [n for n in ORDER if n in REGISTRY] + [n for n in REGISTRY if n not in ORDER]


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
    return f.on_force(rd) if hasattr(f, "on_force") else True


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
