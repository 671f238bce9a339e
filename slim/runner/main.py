"""The `slim` command ([project.scripts] in pyproject.toml): one subcommand per job, each calling the very function
behind jobs/<x>.py (slim.runner.cli), so `slim run ...` and `python jobs/pipeline.py ...` are the same program.
The jobs/*.py scripts stay: `ray job submit` runs a file, not an installed command."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def _pipeline(argv: list[str]) -> int:
    from slim.runner.cli import main_pipeline

    return main_pipeline(argv)


def _check(argv: list[str]) -> int:
    from slim.runner.cli import main_pipeline

    return main_pipeline(["--check", *argv])


def _stage(argv: list[str]) -> int:
    """`slim stage NAME ...` is `python jobs/NAME.py ...`: one stage, with that job's flags (--force, --retry-failed)."""
    from slim.runner import stages
    from slim.runner.cli import main_stage

    names = stages.names()
    if not argv or argv[0] not in names:
        p = argparse.ArgumentParser(prog="slim stage")
        p.add_argument("name", choices=names, help="the stage to run, as jobs/<name>.py does")
        p.parse_args(argv[:1])  # exits 2 with the usage line and the known names (or prints the help)
    with _prog(f"slim stage {argv[0]}"):
        return main_stage(argv[0], argv[1:])


def _serve(argv: list[str]) -> int:
    from slim.runner.cli import main_stage

    return main_stage("serve", argv)


def _explain(argv: list[str]) -> int:
    from slim.runner.cli import main_explain

    return main_explain(argv)


def _migrate(argv: list[str]) -> int:
    from slim.runner.cli import main_migrate

    return main_migrate(argv)


# name -> (one line for `slim --help`, the job it runs, the function behind that job)
COMMANDS: dict[str, tuple[str, str, Callable[[list[str]], int]]] = {
    "run": ("run the pipeline: every stage but serve, or --stages a,b", "jobs/pipeline.py", _pipeline),
    "check": ("check the config, models and paths and print what each stage would do; start nothing",
              "jobs/pipeline.py --check", _check),
    "stage": ("run one stage with its own job's flags: slim stage train --config FILE", "jobs/<stage>.py", _stage),
    "serve": ("serve a trained recommender over HTTP until interrupted", "jobs/serve.py", _serve),
    "explain": ("one user's top-k items and the rationale behind them, from a finished run", "jobs/explain.py",
                _explain),
    "migrate": ("move run directories from before 0.2 to one folder per stage", "jobs/migrate.py", _migrate),
}


class _prog:
    """argparse names a program after sys.argv[0]; the jobs' parsers then say `slim run`, not `slim`, in their usage
    lines. Restored on the way out (the command may be called in-process, e.g. by a test)."""

    def __init__(self, name: str):
        self.name, self.saved = name, None

    def __enter__(self):
        self.saved, sys.argv[0] = sys.argv[0], self.name

    def __exit__(self, *exc):
        sys.argv[0] = self.saved


def parser() -> argparse.ArgumentParser:
    from importlib import metadata

    p = argparse.ArgumentParser(
        prog="slim", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SLIM on Ray: the pipeline's jobs as one command. `slim COMMAND --help` shows a command's flags.",
        epilog="Each command is a job script (the form `ray job submit` runs):\n" + "\n".join(
            f"  slim {n:8s} = python {job}" for n, (_, job, _) in COMMANDS.items()))
    try:
        version = metadata.version("slim-ray")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    p.add_argument("--version", action="version", version=f"slim-ray {version}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (line, _, _) in COMMANDS.items():
        sub.add_parser(name, help=line, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        p = parser()
        if not argv:
            p.print_usage(sys.stderr)
            print("slim: error: a command is required (slim --help lists them)", file=sys.stderr)
            return 2
        p.parse_args(argv[:1])  # --help / --version exit 0; an unknown command exits 2 with the usage line
        p.print_usage(sys.stderr)  # what parse_args let through, e.g. a lone `--`
        return 2
    name, rest = argv[0], argv[1:]
    with _prog(f"slim {name}"):
        return COMMANDS[name][2](rest)


if __name__ == "__main__":
    sys.exit(main())
