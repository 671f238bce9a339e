"""docs/config.md from the config dataclasses: `python -m slim.runner.configdoc > docs/config.md`.

Every key of every section (nested sections as `section.sub.key`) with its type, default, allowed values and one
line of meaning. The meaning is the field's `metadata["doc"]` if it has one, else the comment beside it: a comment
on the field's own line, and the comment block right above it. A block above one field also describes the fields
right after it that it names and that have no comment of their own (`# Replicas: ... num_replicas and
max_replicas ...`). tests/runner/test_configdoc.py fails when docs/config.md differs from what this prints.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from typing import Any, Union

HEADER = """# Config reference

Generated from the config dataclasses by `python -m slim.runner.configdoc > docs/config.md`; do not edit by hand
(`tests/runner/test_configdoc.py` fails when this file is out of date). A config file has the top-level keys below and
one section per stage; any key can be overridden on the command line as `section.key=value`. Unknown keys, values
of the wrong type and names outside the allowed values stop a job before any work, naming the key.
"""


def comments(cls: type) -> dict[str, str]:
    """field name -> its comment (own line and block above), from the source of the class and of the dataclasses it
    extends (slim.train.stage.TrainConfig is made by make_dataclass on TrainConfigBase: the fields' comments are
    there)."""
    out: dict[str, str] = {}
    for c in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        out.update({k: v for k, v in _own_comments(c).items() if v or k not in out})
    return out


def _own_comments(cls: type) -> dict[str, str]:
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    line_comment, continued = {}, set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            line_comment[tok.start[0]] = tok.string.lstrip("#").strip()
            if tok.string.startswith("#  "):  # "#   more": the comment of the field above, continued
                continued.add(tok.start[0])
    lines = src.splitlines()
    body = ast.parse(src).body[0].body
    fields = [(n.target.id, n.lineno, n.end_lineno) for n in body
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    out, block = {}, ""
    for name, start, end in fields:
        above, ln = [], start - 1
        while ln >= 1 and lines[ln - 1].strip().startswith("#") and ln not in continued:
            above.insert(0, line_comment.get(ln, ""))
            ln -= 1
        while end + 1 in continued:
            end += 1
        own = " ".join(line_comment[i] for i in range(start, end + 1) if i in line_comment)
        if above:
            block = " ".join(above)
        text = " ".join(t for t in (" ".join(above), own) if t)
        if not text and block and re.search(rf"\b{re.escape(name)}\b", block):
            text = block  # a group comment that names this field too
        elif not above and own:
            block = ""  # a field with its own comment ends the group above
        out[name] = text
    return out


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return " or ".join(type_name(a) for a in rest) + (" or null" if len(rest) < len(args) else "")
    if origin is typing.Literal:
        return "str" if all(isinstance(a, str) for a in args) else "one of"
    if origin in (tuple, list):
        return f"list of {type_name(args[0]) if args else 'any'}"
    if origin is dict or tp is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "section"
    return getattr(tp, "__name__", str(tp))


def allowed(tp: Any) -> str:
    """The names a Literal (or a list of a Literal) accepts, else ""."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType, tuple, list):
        return next((a for a in map(allowed, args) if a), "")
    if origin is typing.Literal:
        return ", ".join(f"`{a}`" for a in args)
    return ""


def default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def show(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(show(v).strip('"') if isinstance(v, str) else show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def rows(cls: type, prefix: str, shared: dict[str, str]) -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, allowed, meaning) for every field of `cls`, nested sections after their own row."""
    hints, notes = typing.get_type_hints(cls), comments(cls)
    out, nested = [], []
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}.{f.name}"
        meaning = f.metadata.get("doc") or notes.get(f.name) or shared.get(f.name, "")
        if dataclasses.is_dataclass(tp):
            out.append((key, "section", "", "", meaning or f"see the `{key}.*` keys"))
            nested += rows(tp, key, {})
            continue
        out.append((key, type_name(tp), show(default(f)), allowed(tp), meaning))
    return out + nested


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def table(items: list[tuple]) -> list[str]:
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    return lines + [f"| `{k}` | {cell(t)} | `{cell(d)}` | {cell(a)} | {cell(m)} |" if d else
                    f"| `{k}` | {cell(t)} |  | {cell(a)} | {cell(m)} |" for k, t, d, a, m in items]


def render() -> str:
    from slim.runtime import config
    from slim.runner import stages

    out = [HEADER, "## Top-level keys", ""]
    hints = {}  # a top-level key's type, from the sections that declare it (`tracking`: train, evaluate, teacher)
    for name in reversed(stages.names()):
        hints.update(typing.get_type_hints(stages.REGISTRY[name]()[0]))
    # a key no section declares (ray_host: read by the job's entry) is an optional string
    out += table([(k, type_name(hints.get(k, typing.Optional[str])), "", "", doc) for k, doc in config.SHARED.items()]
                 + [(k, "list[str]", "", ", ".join(stages.names()), doc) for k, doc in stages.PIPELINE_KEYS.items()])
    out += ["", "A section may repeat a top-level key to override it for that stage alone.", ""]
    for name in stages.names():
        cls = stages.REGISTRY[name]()[0]
        out += [f"## `{name}` ({cls.__module__}.{cls.__name__})", ""]
        out += table(rows(cls, name, config.SHARED)) + [""]
    return "\n".join(out)


def missing_meaning() -> list[str]:
    """Keys whose meaning is empty: a comment to add beside the field."""
    from slim.runtime import config
    from slim.runner import stages

    return [k for n in stages.names() for k, *_, m in rows(stages.REGISTRY[n]()[0], n, config.SHARED) if not m]


if __name__ == "__main__":
    sys.stdout.write(render())
    if "--missing" in sys.argv[1:]:
        print("\n".join(missing_meaning()), file=sys.stderr)
