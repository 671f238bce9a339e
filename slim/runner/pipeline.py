"""Run stages in order; each skips itself when its manifest matches (config + upstream outputs)."""

from __future__ import annotations

import logging
import os
import sys
import time

from slim.runtime import config
from slim.runtime import console
from slim.runner import stages
from slim.runtime.console import say

log = logging.getLogger(__name__)


def stage_list(value: str, flag: str, extra: tuple[str, ...] = ()) -> list[str]:
    """'data,train' -> ['data', 'train']; an unknown name is a ConfigError listing the known ones."""
    names = [s.strip() for s in value.split(",") if s.strip()]
    known = stages.names() + list(extra)
    unknown = [s for s in names if s not in known]
    if unknown:
        raise config.ConfigError(f"{flag}: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(known)}")
    return names


def retry_list(value: str) -> list[str]:
    """--retry-failed's stages; one whose config keeps no failed rows to redo is a ConfigError naming those that do."""
    from slim.runner.cli import retry_stages

    names = stage_list(value, "--retry-failed")
    allowed = retry_stages()
    wrong = [s for s in names if s not in allowed]
    if wrong:
        raise config.ConfigError(f"--retry-failed: {', '.join(wrong)} keeps no failed rows to redo; "
                                 f"stages that do: {', '.join(allowed)}")
    return names


def prepare(raw: dict, only: list[str] | None = None) -> tuple[dict, list[str]]:
    """Every section loaded and checked, and the constraints between the stages to run: (configs, stages)."""
    from slim.runner import check

    cfgs = stages.load_all(raw)
    wanted = only or stages.default_names()
    stage_list(",".join(wanted), "--stages")
    check.validate(cfgs, wanted)
    return cfgs, wanted


def run(raw: dict, only: list[str] | None = None, force: list[str] | None = None) -> dict:
    """raw: the merged YAML mapping. only: stage names to run (default: all but the on-demand ones, in order)."""
    cfgs, wanted = prepare(raw, only)
    stage_list(",".join(force or []), "--force", ("all",))
    summary = {}
    todo = [s for s in stages.names() if s in wanted]
    for i, name in enumerate(todo, 1):
        t0, started = time.perf_counter(), time.time()
        say(f"[{i}/{len(todo)}] {name}")
        m = stages.run(name, cfgs[name], force=bool(force and (name in force or "all" in force)))
        fresh = not stages.skipped(m, started)
        summary[name] = {"seconds": time.perf_counter() - t0, "counts": getattr(m, "counts", {}), "fresh": fresh}
    print_summary(summary)
    if "evaluate" in summary:
        from slim.evaluate.stage import headline

        say("")
        for line in headline(cfgs["evaluate"].run_dir):
            say(line)
    say(f"stage logs: {stages.log_dir(cfgs)}")
    return summary


def dry_run(raw: dict, only: list[str] | None = None, force: list[str] | None = None) -> int:
    """What `run` would do, from the manifests on disk; starts no Ray and writes nothing. 0 = fine, 2 = problems."""
    from slim.runner import check

    cfgs, wanted = prepare(raw, only)
    lines, problems = check.plan(cfgs, wanted, force or [])
    print(f"config OK: {len(cfgs)} sections; stages to run: {', '.join(s for s in stages.names() if s in wanted)}")
    print("\n".join(lines))
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 2 if problems else 0


def runtime_env_vars(path: str) -> dict[str, str]:
    """The env_vars of a runtime_env YAML (what a submitted job's driver and workers get): --check reads a bucket
    whose endpoint or keys only the job's runtime_env carries. ConfigError names the file for anything else."""
    import yaml

    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise config.ConfigError(f"--runtime-env {path}: cannot read it ({type(e).__name__}: {e})") from None
    env = doc.get("env_vars", {}) if isinstance(doc, dict) else None
    if not isinstance(env, dict) or not all(isinstance(v, (str, int, float)) for v in env.values()):
        raise config.ConfigError(f"--runtime-env {path}: env_vars must be a mapping of names to strings")
    return {str(k): str(v) for k, v in env.items()}


def print_summary(summary: dict) -> None:
    say("")
    say("pipeline summary")
    for name, s in summary.items():
        counts = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in list(s["counts"].items())[:5])
        say(f"  {name:10s} {s['seconds']:8.1f}s  {'' if s['fresh'] else '(up to date) '}{counts}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from slim.runner.cli import add_verbose, user_errors

    p = argparse.ArgumentParser(description="Run the SLIM pipeline (all stages, or --stages a,b)")
    p.add_argument("--config", required=True)
    p.add_argument("--stages", default="", help="comma-separated stage names (default: all but serve)")
    p.add_argument("--force", default="", help="comma-separated stages to rerun, or 'all'")
    p.add_argument("--check", "--dry-run", action="store_true", dest="check",
                   help="check the config, models and paths, print what each stage would do; start nothing")
    p.add_argument("--retry-failed", default="", help="comma-separated stages (teacher, student) whose failed rows "
                   "to redo, keeping the rest")
    p.add_argument("--runtime-env", default="", help="with --check: a runtime_env YAML whose env_vars the job "
                   "would run with (a bucket's endpoint and keys), e.g. cluster/runtime_env_s3.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (every key: docs/config.md)")
    add_verbose(p)
    args = p.parse_args(argv)
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
        only = stage_list(args.stages, "--stages")
        force = stage_list(args.force, "--force", ("all",))
        if args.check:
            return dry_run(raw, only, force)
        run(raw, only, force)
    except user_errors() as e:
        from slim.runner.cli import report

        return report(e)
    return 0
