"""What the wheel ships (pyproject.toml's package find): every library package of slim, and not the test doubles in
slim/testing, which only the tests import (.importlinter). Read through setuptools' own finder with the project's
include/exclude, as `pip wheel .` applies them."""

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def _shipped(find: dict) -> set:
    return set(find_packages(where=str(ROOT), include=find.get("include", ("*",)), exclude=find.get("exclude", ())))


def test_the_wheel_ships_the_library_and_not_the_test_doubles():
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = _shipped(find)
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "slim").rglob("__init__.py")}
    assert "slim.testing" in packages and "slim.encode" in packages
    assert shipped == {p for p in packages if not p.startswith("slim.testing")}
    assert "slim.testing" in _shipped({**find, "exclude": []})  # without the exclude it would ship
