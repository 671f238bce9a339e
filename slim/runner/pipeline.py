"""Run stages in order; each skips itself when its manifest matches (config + upstream outputs). The command line
in front of it is slim.runner.cli.main_pipeline."""

from __future__ import annotations

import logging
import sys
import time

from slim.runtime import config
from slim.runner import stages
from slim.runtime.console import say

log = logging.getLogger(__name__)

# --force alone: every stage the command runs (the value slim.runner.cli gives a bare --force)
FORCE_ALL = "all"


def stage_list(value: str, flag: str, extra: tuple[str, ...] = ()) -> list[str]:
    """'data,train' -> ['data', 'train']; an unknown name is a ConfigError listing the known ones."""
    names = [s.strip() for s in value.split(",") if s.strip()]
    known = stages.names() + list(extra)
    unknown = [s for s in names if s not in known]
    if unknown:
        raise config.ConfigError(f"{flag}: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(known)}")
    return names


def forced_names(force: list[str] | None, wanted: list[str]) -> list[str]:
    """The stages --force names, FORCE_ALL expanded to the stages this command runs; a forced stage the command
    does not run is a ConfigError (it was silently ignored: `--stages data --force train` forced nothing)."""
    names = stage_list(",".join(force or []), "--force", (FORCE_ALL,))
    if FORCE_ALL in names:
        return list(wanted)
    idle = [s for s in names if s not in wanted]
    if idle:
        raise config.ConfigError(f"--force {','.join(idle)}: not among the stages this command runs "
                                 f"({', '.join(wanted)}); add it to --stages or leave it out of --force")
    return names


def selected(raw: dict, only: list[str] | None = None) -> tuple[list[str], str]:
    """The stages to run and who chose them: --stages, else the config's top-level `stages:` (a list, or
    `stages=a,b` on the command line), else every stage but the on-demand ones."""
    if only:
        return stage_list(",".join(only), "--stages"), "--stages"
    listed = raw.get("stages")
    if listed is None:
        return stages.default_names(), ""
    if isinstance(listed, str):
        listed = listed.split(",")
    if not isinstance(listed, (list, tuple)) or not all(isinstance(s, str) for s in listed) or not listed:
        raise config.ConfigError(f"stages: expected a list of stage names, got {listed!r}; stages: "
                                 f"{', '.join(stages.names())}")
    return stage_list(",".join(listed), "stages (the config's top-level key)"), "the config's stages:"


def prepare(raw: dict, only: list[str] | None = None) -> tuple[dict, list[str]]:
    """Every section loaded and checked, and the constraints between the stages to run: (configs, stages)."""
    return _prepare(raw, only)[:2]


def _prepare(raw: dict, only: list[str] | None = None) -> tuple[dict, list[str], str]:
    """prepare, and who chose the stages (selected's second value): stages are selected once per command."""
    from slim.runner import check

    cfgs = stages.load_all(raw)
    wanted, chosen_by = selected(raw, only)
    try:
        check.validate(cfgs, wanted)
    except config.ConfigError as e:
        if chosen_by:
            raise
        # every stage by default: a config meant for some stages says which (the LLM-free ones need no teacher)
        raise config.ConfigError(f"{e} (jobs/pipeline.py runs every stage but serve unless the config's top-level "
                                 "`stages:` or --stages names fewer, e.g. stages: [data, encode, train, evaluate])"
                                 ) from None
    return cfgs, wanted, chosen_by


def run(raw: dict, only: list[str] | None = None, force: list[str] | None = None) -> dict:
    """raw: the merged YAML mapping. only: stage names to run (default: all but the on-demand ones, in order)."""
    cfgs, wanted = prepare(raw, only)
    forced = forced_names(force, wanted)
    summary = {}
    todo = [s for s in stages.names() if s in wanted]
    for i, name in enumerate(todo, 1):
        t0, started = time.perf_counter(), time.time()
        say(f"[{i}/{len(todo)}] {name}")
        m = stages.run(name, cfgs[name], force=name in forced)
        fresh = not stages.skipped(m, started)
        summary[name] = {"seconds": time.perf_counter() - t0, "counts": getattr(m, "counts", {}), "fresh": fresh}
    print_summary(summary)
    for line in [x for name in summary for x in stages.closing(name, cfgs[name])]:
        say(line)
    say(f"stage logs: {stages.log_dir(cfgs)}")
    return summary


def dry_run(raw: dict, only: list[str] | None = None, force: list[str] | None = None) -> int:
    """What `run` would do, from the manifests on disk; starts no Ray and writes nothing. 0 = fine, 2 = problems."""
    from slim.runner import check

    cfgs, wanted, chosen_by = _prepare(raw, only)
    forced = forced_names(force, wanted)  # check.plan takes stage names
    lines, problems = check.plan(cfgs, wanted, forced, chosen_by or "runs only when named in --stages")
    print(f"config OK: {len(cfgs)} sections; stages to run: {', '.join(s for s in stages.names() if s in wanted)}"
          + (f" (from {chosen_by})" if chosen_by else " (every stage but serve)"))
    print("\n".join(lines))
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 2 if problems else 0


def print_summary(summary: dict) -> None:
    say("")
    say("pipeline summary")
    for name, s in summary.items():
        counts = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in list(s["counts"].items())[:5])
        say(f"  {name:10s} {s['seconds']:8.1f}s  {'' if s['fresh'] else '(up to date) '}{counts}")
