"""docs/config.md is generated from the config dataclasses (python -m slim.runner.configdoc > docs/config.md): it must be
what the generator prints now, and the generator must list every key of every section."""

import dataclasses
import typing
from pathlib import Path

from slim.runtime import config
from slim.runner import configdoc
from slim.runner import stages

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_is_up_to_date():
    assert (ROOT / "docs" / "config.md").read_text() == configdoc.render(), (
        "docs/config.md is out of date: run `python -m slim.runner.configdoc > docs/config.md`")


def _keys(cls, prefix):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _keys(hints[f.name], f"{prefix}.{f.name}")


def test_every_key_is_documented_with_its_default_and_allowed_values():
    text = configdoc.render()
    documented = {ln.split("`")[1] for ln in text.splitlines() if ln.startswith("| `")}
    every = {k for n in stages.names() for k in _keys(stages.REGISTRY[n]()[0], n)}
    every |= set(config.SHARED) | set(stages.PIPELINE_KEYS)
    assert every == documented
    assert "| `train.strategy` | str | `\"fanout\"` | `fanout`, `ddp`, `deepspeed` |" in text
    assert "| `teacher.max_cost_usd` | float or null | `10` |" in text


def test_comments_become_meanings():
    @dataclasses.dataclass(frozen=True)
    class Example:
        a: int = 1  # the a
        # Replicas: a fixed count, or between num and most when most > 0.
        num: int = 1
        most: int = 0
        other: str = "x"
        long: int = 2  # first part,
        #   continued here
        meta: int = dataclasses.field(default=3, metadata={"doc": "from metadata"})  # not this

    notes = configdoc.comments(Example)
    assert notes["a"] == "the a" and notes["num"] == notes["most"] and notes["num"].startswith("Replicas")
    assert notes["other"] == "" and notes["long"] == "first part, continued here"
    rows = {r[0]: r for r in configdoc.rows(Example, "x", {})}
    assert rows["x.meta"][4] == "from metadata" and rows["x.other"][2] == '"x"'
