"""`make bench`: rerun every benchmark with the command recorded in its results file (bench/results/<name>.md,
the first line starting "Command: `...`"), one after another, so the figures there can be reproduced as a set.

  .venv/bin/python bench/run_all.py --list            # what would run
  .venv/bin/python bench/run_all.py --only student encode

Benchmarks time their baselines in the same process, so run them on an otherwise idle machine; the
recommenders bench needs the Games run directory (`runs/games`, from ../shared), and is skipped without it.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench.harness import ROOT  # noqa: E402

NEEDS = {"recommenders": ROOT / "runs" / "games"}  # inputs a benchmark cannot generate itself


def recorded_commands() -> dict[str, str]:
    out = {}
    for md in sorted((ROOT / "bench" / "results").glob("*.md")):
        cmd = harness.recorded_command(md.read_text())
        if cmd:
            out[md.stem] = cmd
    return out


def to_argv(cmd: str) -> list[str]:
    """`[nice] [PYTHONPATH=.] [.venv/bin/python] bench/x.py args` -> argv with this interpreter."""
    words = [w for w in shlex.split(cmd) if not w.startswith("PYTHONPATH=")]
    if words[0] == "nice":
        return ["nice", *to_argv(" ".join(shlex.quote(w) for w in words[1:]))]
    if words[0].endswith("python"):
        words = words[1:]
    return [sys.executable, *words]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", help="names of bench/results/<name>.md to rerun")
    p.add_argument("--list", action="store_true")
    a = p.parse_args()
    cmds = recorded_commands()
    unknown = set(a.only or []) - set(cmds)
    if unknown:
        raise SystemExit(f"no recorded command for {sorted(unknown)}; known: {sorted(cmds)}")
    env = harness.subprocess_env()
    failed = []
    for name, cmd in cmds.items():
        if a.only and name not in a.only:
            continue
        argv = to_argv(cmd)
        if a.list:
            print(f"{name}: {' '.join(argv)}")
            continue
        if name in NEEDS and not NEEDS[name].exists():
            print(f"== {name}: skipped, needs {NEEDS[name]}")
            continue
        print(f"== {name}: {' '.join(argv)}", flush=True)
        with harness.timed() as t:
            rc = subprocess.call(argv, cwd=ROOT, env=env)
        print(f"== {name}: exit {rc} after {t.s:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
