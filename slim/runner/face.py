"""The stage face: what the runner (--check, the planner, the manifests, `jobs/<stage>.py`) calls on a stage module,
written once as a Protocol, with the defaults a stage gets for the members it leaves out.

A stage module (slim/<stage>/stage.py) must define the REQUIRED members and may define the others; what it leaves
out means "nothing here" (Defaults). `conformance(module)` lists how a module departs from the Protocol (a required
member missing, a member of the wrong kind, a function whose parameters differ): tests/runner/test_stage_face.py runs it
over every registered stage. `Face` is a module seen through the Protocol, its own members first.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, Protocol


class StageFace(Protocol):
    """A stage, as the runner sees it. The config travels as `cfg` (an instance of CONFIG)."""

    CONFIG: type  # its frozen config dataclass: the `<stage>:` section of a config file
    STAGE: str  # its name, which is its run-directory folder (where its manifest lives) and its config section
    WRITES: tuple  # that folder and any product folder beside it (train: models/), which --force clears; () = none

    def run(self, cfg: Any, force: bool = False) -> Any:
        """Do the stage's work, or return the matching manifest untouched; -> its Manifest."""

    def reads(self, cfg: Any) -> list[str]:
        """The upstream stages whose output it reads (their folders)."""

    def stage_config(self, cfg: Any) -> dict:
        """What its manifest fingerprints of its config (runtime knobs left out)."""

    def own_inputs(self, cfg: Any, root: Any) -> dict:
        """Inputs fingerprinted from files rather than from upstream manifests, as its manifest records them."""

    def resources(self, cfg: Any, problems: list) -> list[str]:
        """What --check says about its models and input files; a missing one is appended to problems."""

    def check(self, cfg: Any) -> None:
        """A constraint on its own config, raised as ConfigError before any stage runs."""

    def plan_line(self, cfg: Any, wanted: list, problems: list) -> str:
        """What --check says of an on-demand stage (no manifest), given the stages about to run with it."""

    def on_force(self, rd: Any) -> bool:
        """What --force clears beside its folder, before it runs; -> the force flag passed on to run."""

    def closing(self, cfg: Any) -> list[str]:
        """Lines said on the console after it ran (evaluate's headline)."""


REQUIRED = ("CONFIG", "STAGE", "WRITES", "run")


class Defaults:
    """The optional members, for a stage that leaves them out: each says the stage has nothing there."""

    @staticmethod
    def reads(cfg: Any) -> list[str]:
        return []  # reads no stage's output (its own files, or none)

    @staticmethod
    def stage_config(cfg: Any) -> dict:
        return {}  # nothing to fingerprint

    @staticmethod
    def own_inputs(cfg: Any, root: Any) -> dict:
        return {}  # every input is an upstream stage's output

    @staticmethod
    def resources(cfg: Any, problems: list) -> list[str]:
        return []  # no model or input file to check

    @staticmethod
    def check(cfg: Any) -> None:
        return None  # no constraint of its own

    @staticmethod
    def plan_line(cfg: Any, wanted: list, problems: list) -> str:
        return "runs when named"

    @staticmethod
    def on_force(rd: Any) -> bool:
        return True  # nothing beside its folder: a plain forced run

    @staticmethod
    def closing(cfg: Any) -> list[str]:
        return []


def members() -> dict[str, Any]:
    """The Protocol's members: name -> its annotation (a value) or its function (a callable)."""
    out: dict[str, Any] = dict(StageFace.__annotations__)
    out.update({k: v for k, v in vars(StageFace).items() if inspect.isfunction(v) and not k.startswith("_")})
    return out


MEMBERS = members()


def _params(fn) -> list[tuple[str, Any, bool]]:
    """(name, kind, has a default) of each parameter, `self` dropped."""
    return [(p.name, p.kind, p.default is not p.empty)
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _mismatch(name: str, want, got) -> str:
    """'' when `got` can stand for the Protocol's function `want`: the same parameters in the same order, and a
    default wherever the Protocol has one (a default the Protocol lacks is allowed)."""
    if not callable(got):
        return f"{name} is not a function"
    w, g = _params(want), _params(got)
    if [(n, k) for n, k, _ in w] != [(n, k) for n, k, _ in g] or any(a[2] and not b[2] for a, b in zip(w, g)):
        return f"{name}{inspect.signature(got)} differs from {name}{inspect.signature(want)} (self aside)"
    return ""


def conformance(module: Any, required: tuple = REQUIRED) -> list[str]:
    """How `module` departs from StageFace: one line per problem, [] when it conforms."""
    where, out = getattr(module, "__name__", repr(module)), []
    for name, want in MEMBERS.items():
        if not hasattr(module, name):
            out += [f"{where}: no {name}"] if name in required else []
            continue
        got = getattr(module, name)
        if inspect.isfunction(want):
            bad = _mismatch(name, want, got)
        elif name == "CONFIG":
            bad = "" if isinstance(got, type) else "CONFIG is not a class"
        elif name == "WRITES":
            ok = isinstance(got, tuple) and all(isinstance(w, str) for w in got)
            bad = "" if ok else "WRITES is not a tuple of str"
        else:
            bad = "" if isinstance(got, str) else f"{name} is not a str"
        out += [f"{where}: {bad}"] if bad else []
    return out


class Face:
    """A stage module seen through StageFace: its own members, else the Defaults."""

    def __init__(self, module: ModuleType):
        self.module = module

    def __getattr__(self, name: str) -> Any:
        try:
            return getattr(self.module, name)
        except AttributeError:
            if name in MEMBERS and hasattr(Defaults, name):
                return getattr(Defaults, name)
            raise
