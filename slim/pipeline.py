"""Run stages in order; each skips itself when its manifest matches (config + upstream outputs)."""

from __future__ import annotations

import logging
import sys
import time

from slim import config, stages

log = logging.getLogger(__name__)


def run(raw: dict, only: list[str] | None = None, force: list[str] | None = None) -> dict:
    """raw: the merged YAML mapping. only: stage names to run (default: all registered, in order)."""
    cfgs = stages.load_all(raw)
    wanted = only or stages.names()
    unknown = [s for s in wanted if s not in cfgs]
    if unknown:
        raise config.ConfigError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(stages.names())}")
    summary = {}
    for name in (s for s in stages.names() if s in wanted):
        t0 = time.perf_counter()
        print(f"=== {name} ===", flush=True)
        m = stages.run(name, cfgs[name], force=bool(force and (name in force or "all" in force)))
        summary[name] = {"seconds": time.perf_counter() - t0, "counts": getattr(m, "counts", {})}
    print_summary(summary)
    return summary


def print_summary(summary: dict) -> None:
    print("\n=== pipeline summary ===")
    for name, s in summary.items():
        counts = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in list(s["counts"].items())[:5])
        print(f"{name:10s} {s['seconds']:8.1f}s  {counts}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Run the SLIM pipeline (all stages, or --stages a,b)")
    p.add_argument("--config", required=True)
    p.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    p.add_argument("--force", default="", help="comma-separated stages to rerun, or 'all'")
    p.add_argument("--retry-failed", default="", help="comma-separated stages (teacher, student) whose failed rows "
                   "to redo, keeping the rest")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    retry = [f"{s}.retry_failed=true" for s in args.retry_failed.split(",") if s]
    try:
        raw = config.load_raw(args.config, list(args.overrides) + retry)
        run(raw, [s for s in args.stages.split(",") if s], [s for s in args.force.split(",") if s])
    except config.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0
