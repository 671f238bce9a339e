"""The shared command line of every job: `--config FILE [--force] key=value ...`."""

from __future__ import annotations

import argparse
import logging
import sys


def parse(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=None, help="YAML config (one section per stage)")
    p.add_argument("--force", action="store_true", help="rerun even if the stage's manifest matches")
    p.add_argument("--retry-failed", action="store_true",
                   help="redo only the rows that failed before, keep the rest (teacher, student)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. data.min_count=5")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args


def main_stage(stage: str, argv: list[str] | None = None) -> int:
    """Entry point shared by jobs/<stage>.py: load the config section and run the stage."""
    from slim import config, stages

    args = parse(argv, description=f"SLIM stage: {stage}")
    try:
        overrides = list(args.overrides) + ([f"{stage}.retry_failed=true"] if args.retry_failed else [])
        raw = config.load_raw(args.config, overrides)
        cfg = stages.load(stage, raw)
    except config.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    stages.run(stage, cfg, force=args.force)
    return 0
