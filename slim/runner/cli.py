"""The shared command line of every job: `--config FILE [--force [STAGES]] key=value ...` (one --force grammar:
alone, the stages the command runs; with names, those).

A bad config or bad input ends a job with one line naming the key, file or row (exit code 2), not a traceback.
"""

from __future__ import annotations

import argparse
import sys

from slim.runtime import console
from slim.runtime.raycluster import set_bind_host  # the config's top-level ray_host
from slim.runtime.signals import job_entry  # SIGINT/SIGTERM and Ray start failures: one line, no traceback


from slim.runner.pipeline import FORCE_ALL  # --force alone: every stage the command runs (see _bare_force)


def add_force(p: argparse.ArgumentParser) -> None:
    """One --force grammar for every job: `--force` alone reruns the stages the command runs, `--force a,b` those
    stages (a stage's own job: its name, or `all`); see _bare_force for `--force key=value`."""
    p.add_argument("--force", nargs="?", const=FORCE_ALL, default="", metavar="STAGES",
                   help="rerun even if the manifest matches: alone, every stage this command runs; or "
                   "comma-separated stage names")


def _bare_force(argv: list[str]) -> list[str]:
    """`--force` followed by an override (`--force data.min_history=5`, as the README has long shown) or by another
    option is a bare --force: argparse would otherwise take the next word as its value. Stage names have no '='."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--force" and (i + 1 == len(out) or out[i + 1].startswith("-") or "=" in out[i + 1]):
            out[i] = f"--force={FORCE_ALL}"
    return out


def _forced(value: str, stage: str) -> bool:
    """A stage job's --force value -> whether to force it; a stage other than its own is a ConfigError."""
    from slim.runner.pipeline import stage_list
    from slim.runtime import config

    names = stage_list(value, "--force", (FORCE_ALL,))
    other = [n for n in names if n not in (stage, FORCE_ALL)]
    if other:
        raise config.ConfigError(f"--force {value}: jobs/{stage}.py runs {stage} only; use `--force` alone or "
                                 f"jobs/pipeline.py --stages {','.join(dict.fromkeys(other))} --force")
    return bool(names)


def parse(argv: list[str] | None = None, description: str = "", retry_failed: bool = False,
          swap: bool = False) -> argparse.Namespace:
    """retry_failed: offer --retry-failed (only stages whose config has `retry_failed` keep failed rows to redo);
    swap: offer --swap (serve)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=None, help="YAML config (one section per stage)")
    add_force(p)
    if retry_failed:
        p.add_argument("--retry-failed", action="store_true",
                       help="redo only the rows that failed before, keep the rest")
    if swap:
        p.add_argument("--swap", action="store_true", help="put the run these settings pick into the app already "
                       "serving at serve.host:serve.port, in place (no request dropped), and return (serve.swap)")
    add_verbose(p)
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. data.min_history=5 "
                   "(every key: docs/config.md)")
    args = p.parse_args(_bare_force(sys.argv[1:] if argv is None else argv))
    console.setup(args.verbose)
    return args


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show Ray's, Ray Data's, Ray Train's and vLLM's logs on "
                   "the console too (they are always in <run_dir>/logs/<stage>.log)")


def user_errors() -> tuple[type, ...]:
    """Errors that a user fixes in the config or the input files; their messages say what and where."""
    from slim.runtime.config import ConfigError
    from slim.data.sources import DataError
    from slim.recsys.data import RecDataError
    from slim.io.rundir import StageNotFinished
    from slim.io.shards import ShardError
    from slim.student.engines import StudentModelError

    return ConfigError, DataError, RecDataError, StageNotFinished, ShardError, StudentModelError


def retry_stages() -> list[str]:
    """Stages whose config has `retry_failed`: they keep failed rows and can redo only those."""
    import dataclasses

    from slim.runner import stages

    return [n for n in stages.names()
            if "retry_failed" in {f.name for f in dataclasses.fields(stages.REGISTRY[n]()[0])}]


def report(e: Exception) -> int:
    """One line on stderr, exit code 2."""
    from slim.runtime.config import ConfigError
    from slim.io.rundir import StageNotFinished
    from slim.student.engines import StudentModelError

    # raised in a Ray task: Ray's error is also an instance of the cause's class; the cause's message is the line
    cause = getattr(e, "cause", None)
    e = cause if isinstance(cause, Exception) else e
    kind = "config error" if isinstance(e, ConfigError) else "data error"
    kind = "error" if isinstance(e, (StageNotFinished, StudentModelError)) else kind
    print(f"{kind}: {' '.join(str(e).split())}", file=sys.stderr)
    return 2


@job_entry
def main_stage(stage: str, argv: list[str] | None = None) -> int:
    """Entry point shared by jobs/<stage>.py: load and check the config, then run the stage."""
    from slim.runner import check
    from slim.runtime import config
    from slim.runner import stages

    args = parse(argv, description=f"SLIM stage: {stage}", retry_failed=stage in retry_stages(),
                 swap=stage == "serve")
    try:
        retry = getattr(args, "retry_failed", False)
        overrides = list(args.overrides) + ([f"{stage}.retry_failed=true"] if retry else [])
        overrides += ["serve.swap=true"] if getattr(args, "swap", False) else []
        raw = config.load_raw(args.config, overrides)
        set_bind_host(raw.get("ray_host"))
        cfgs = stages.load_all(raw)
        check.validate(cfgs, [stage])
        stages.run(stage, cfgs[stage], force=_forced(args.force, stage))
        for line in stages.closing(stage, cfgs[stage]):
            console.say(line)
    except user_errors() as e:
        return report(e)
    return 0


@job_entry
def main_migrate(argv: list[str] | None = None) -> int:
    """jobs/migrate.py: run directories from before 0.2 -> one folder per stage (slim.runner.migrate)."""
    from slim.runner import migrate
    from slim.runtime.config import ConfigError

    p = argparse.ArgumentParser(description="Move run directories from before 0.2 to one folder per stage "
                                "(student/ -> distill/, rationales/ -> student/, embeddings/ -> encode/); "
                                "every finished stage stays current")
    p.add_argument("run_dirs", nargs="+", help="run directories (local paths or s3:// / gs:// URIs)")
    p.add_argument("--dry-run", action="store_true", help="say what would move; change nothing")
    args = p.parse_args(argv)
    console.setup(False)
    try:
        for run_dir in args.run_dirs:
            for line in migrate.summary(migrate.migrate(run_dir, args.dry_run)):
                console.say(line)
    except ConfigError as e:
        return report(e)
    return 0


@job_entry
def main_explain(argv: list[str] | None = None) -> int:
    """jobs/explain.py: one user's top-k items and the rationale behind them, from a finished run directory."""
    import json

    from slim.runtime import config
    from slim.runner.migrate import refuse_old_layout
    from slim.recsys.explain import explain, text_lines

    p = argparse.ArgumentParser(description="Top-k items and the rationale behind them for one user of a finished run")
    p.add_argument("--config", required=True)
    p.add_argument("--user", type=int, required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--run", default=None, help="models/<name>; default: the best by validation NDCG@10")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run_dir=runs/tiny")
    a = p.parse_args(argv)
    try:
        raw = config.load_raw(a.config, a.overrides)
        if not raw.get("run_dir"):
            raise config.ConfigError(f"{a.config}: no run_dir (the top-level key naming the trained run's "
                                     "directory); add it to the file or pass run_dir=PATH")
        refuse_old_layout(raw["run_dir"])  # a run directory from before 0.2 names its folders differently
        out = explain(raw["run_dir"], a.user, a.k, a.run)
    except config.ConfigError as e:
        return report(e)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError's str() adds quotes
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2) if a.json else "\n".join(text_lines(out)))
    return 0


def retry_list(value: str) -> list[str]:
    """--retry-failed's stages; one whose config keeps no failed rows to redo is a ConfigError naming those that do."""
    from slim.runner.pipeline import stage_list
    from slim.runtime import config

    names = stage_list(value, "--retry-failed")
    allowed = retry_stages()
    wrong = [s for s in names if s not in allowed]
    if wrong:
        raise config.ConfigError(f"--retry-failed: {', '.join(wrong)} keeps no failed rows to redo; "
                                 f"stages that do: {', '.join(allowed)}")
    return names


def runtime_env_vars(path: str) -> dict[str, str]:
    """The env_vars of a runtime_env YAML (what a submitted job's driver and workers get): --check reads a bucket
    whose endpoint or keys only the job's runtime_env carries. ConfigError names the file for anything else."""
    import yaml

    from slim.runtime import config

    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise config.ConfigError(f"--runtime-env {path}: cannot read it ({type(e).__name__}: {e})") from None
    env = doc.get("env_vars", {}) if isinstance(doc, dict) else None
    if not isinstance(env, dict) or not all(isinstance(v, (str, int, float)) for v in env.values()):
        raise config.ConfigError(f"--runtime-env {path}: env_vars must be a mapping of names to strings")
    return {str(k): str(v) for k, v in env.items()}


@job_entry
def main_pipeline(argv: list[str] | None = None) -> int:
    """jobs/pipeline.py: the stages in order (slim.runner.pipeline), or --check's plan."""
    import os

    from slim.runner.pipeline import dry_run, run, stage_list
    from slim.runtime import config

    p = argparse.ArgumentParser(description="Run the SLIM pipeline (all stages, or --stages a,b)")
    p.add_argument("--config", required=True)
    p.add_argument("--stages", default="", help="comma-separated stage names (default: all but serve)")
    add_force(p)
    p.add_argument("--check", "--dry-run", action="store_true", dest="check",
                   help="check the config, models and paths, print what each stage would do; start nothing")
    p.add_argument("--retry-failed", default="", help="comma-separated stages (teacher, student) whose failed rows "
                   "to redo, keeping the rest")
    p.add_argument("--runtime-env", default="", help="with --check: a runtime_env YAML whose env_vars the job "
                   "would run with (a bucket's endpoint and keys), e.g. cluster/runtime_env_s3.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (every key: docs/config.md)")
    add_verbose(p)
    args = p.parse_args(_bare_force(sys.argv[1:] if argv is None else argv))
    console.setup(args.verbose)
    try:
        if args.runtime_env and not args.check:
            raise config.ConfigError("--runtime-env is read by --check only; a submitted job gets its runtime_env "
                                     "from `ray job submit --runtime-env` (cluster/submit.sh: SLIM_RUNTIME_ENV)")
        if args.runtime_env:
            env = runtime_env_vars(args.runtime_env)
            os.environ.update(env)
            # names only: the values may be keys of a throwaway server
            print(f"runtime_env {args.runtime_env}: env_vars {', '.join(sorted(env)) or '(none)'}")
        retry = [f"{s}.retry_failed=true" for s in retry_list(args.retry_failed)]
        raw = config.load_raw(args.config, list(args.overrides) + retry)
        set_bind_host(raw.get("ray_host"))
        only = stage_list(args.stages, "--stages")
        force = stage_list(args.force, "--force", (FORCE_ALL,))
        if args.check:
            return dry_run(raw, only, force)
        run(raw, only, force)
    except user_errors() as e:
        return report(e)
    return 0
