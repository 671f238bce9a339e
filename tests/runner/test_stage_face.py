"""The stage face (slim/runner/face.py): every registered stage conforms to the StageFace Protocol, a face that
departs from it is flagged, what a stage leaves out takes the defaults, the stage names are listed once
(slim.io.columns.STAGE_DIRS) and the lists that cannot be derived from it (.importlinter's layers) agree with it."""

import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from slim.io.columns import STAGE_DIRS
from slim.runner import check, face, stages

ROOT = Path(__file__).resolve().parents[2]


def _module(**members) -> SimpleNamespace:
    """A stand-in stage module (a namespace of members: conformance reads attributes only)."""
    @dataclass(frozen=True)
    class Cfg:
        run_dir: str = ""

    base = dict(__name__="planted.stage", CONFIG=Cfg, STAGE="planted", WRITES=("planted",),
                run=lambda cfg, force=False: None)
    return SimpleNamespace(**{**base, **members})


def test_every_stage_conforms_to_the_protocol():
    for name in stages.names():
        module = importlib.import_module(stages.MODULES[name])
        assert face.conformance(module) == [], name
        assert module.STAGE == name
    assert face.conformance(face.Defaults, required=()) == []  # the defaults take the Protocol's parameters
    # every optional member has its default, and the required ones have none
    optional = [m for m in face.MEMBERS if m not in face.REQUIRED]
    assert all(hasattr(face.Defaults, m) for m in optional) and not any(hasattr(face.Defaults, m) for m in face.REQUIRED)


def test_a_face_that_departs_from_the_protocol_is_flagged():
    assert face.conformance(_module()) == []  # the minimal face: the required members only
    full = _module(reads=lambda cfg: [], resources=lambda cfg, problems: [], own_inputs=lambda cfg, root=None: {},
                   plan_line=lambda cfg, wanted, problems: "", on_force=lambda rd: True)
    assert face.conformance(full) == []  # a default the Protocol lacks (root=None) is allowed
    missing = _module()
    del missing.run
    assert face.conformance(missing) == ["planted.stage: no run"]
    wrong = {
        "resources": _module(resources=lambda cfg: []),  # a parameter short
        "plan_line": _module(plan_line=lambda cfg, training, problems: ""),  # another name
        "run": _module(run=lambda cfg, force: None),  # force without its default
        "closing": _module(closing=["not a function"]),
        "CONFIG": _module(CONFIG="not a class"),
        "WRITES": _module(WRITES=["planted"]),  # a list, not a tuple
        "STAGE": _module(STAGE=None),
    }
    for member, module in wrong.items():
        got = face.conformance(module)
        assert len(got) == 1 and member in got[0], (member, got)


def test_what_a_stage_leaves_out_takes_the_defaults():
    serve = stages.face("serve")  # serve writes nothing and fingerprints nothing: no stub of its own
    module = importlib.import_module("slim.serve.stage")
    for member in ("reads", "stage_config", "own_inputs", "resources", "check", "on_force", "closing"):
        assert not hasattr(module, member), member
        assert getattr(serve, member) is getattr(face.Defaults, member)
    cfg = serve.CONFIG()
    assert (serve.reads(cfg), serve.stage_config(cfg), serve.own_inputs(cfg, None), serve.resources(cfg, [])) == (
        [], {}, {}, [])
    assert serve.on_force(None) is True and serve.closing(cfg) == [] and serve.check(cfg) is None
    assert serve.__name__ == "slim.serve.stage" and serve.plan_line is module.plan_line  # its own members first
    evaluate = stages.face("evaluate")
    assert evaluate.closing is importlib.import_module("slim.evaluate.stage").closing
    with pytest.raises(AttributeError):
        serve.print_summary  # not a face member: no default stands in


def test_stage_names_are_listed_once():
    assert stages.ORDER == (*STAGE_DIRS, *stages.ON_DEMAND) and stages.names() == list(stages.ORDER)
    assert list(stages.MODULES) == list(stages.ORDER) == list(stages.REGISTRY)
    for name in stages.ORDER:
        assert (ROOT / "slim" / name / "stage.py").exists() and (ROOT / "jobs" / f"{name}.py").exists()
    assert layer_problems((ROOT / ".importlinter").read_text()) == []


def layer_problems(text: str) -> list[str]:
    """How .importlinter's layers depart from the stage list: the stages' layer (independent siblings, joined by
    `|`) must name exactly STAGE_DIRS in pipeline order, and each on-demand stage sits in a layer of its own."""
    block = re.search(r"^layers\s*=\s*\n((?:[ \t]+\S.*\n?)+)", text, re.M)
    if not block:
        return ["no layers"]
    layers = [[m.strip() for m in line.split("|")] for line in block.group(1).splitlines() if line.strip()]
    stage_layer = next((lay for lay in layers if len(lay) > 1), [])
    out = [] if stage_layer == [f"slim.{n}" for n in STAGE_DIRS] else [f"stages' layer {stage_layer}"]
    return out + [f"no layer of its own: {n}" for n in stages.ON_DEMAND if [f"slim.{n}"] not in layers]


def test_a_layers_line_that_disagrees_is_flagged():
    text = (ROOT / ".importlinter").read_text()
    assert layer_problems(text.replace(" | slim.encode", "")) == [
        f"stages' layer {[f'slim.{n}' for n in STAGE_DIRS if n != 'encode']}"]
    assert layer_problems(text.replace("    slim.serve\n", "")) == ["no layer of its own: serve"]
    assert len(layer_problems(text.replace("slim.data | slim.teacher", "slim.teacher | slim.data"))) == 1


STAGE_LITERAL = re.compile(r"[\"'](%s)[\"']" % "|".join(stages.ORDER))


def test_the_planner_names_no_stage():
    """--check's plan reads each stage through its face: no stage named in plan or _why_run (validate holds the
    constraints between stages, which name them)."""
    for fn in (check.plan, check._why_run, check.depends):
        assert not STAGE_LITERAL.search(inspect.getsource(fn)), fn.__name__
    assert STAGE_LITERAL.search("plan_line(cfg, 'train' in wanted, problems)")  # what it looked for


def test_serve_plan_line_asks_whether_train_runs_first(tmp_path):
    cfg = stages.load("serve", {"run_dir": str(tmp_path)})
    lines, problems = check.plan({"serve": cfg}, ["serve"], [])
    assert "no trained model to serve" in lines[0] and len(problems) == 1 and problems[0].startswith("serve: ")
    lines, problems = check.plan({"serve": cfg}, ["train", "serve"], [])
    assert "serves the best run train writes" in lines[0] and problems == []
