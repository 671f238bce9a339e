"""The tests' import path of slim/testing/adapter.py, which bench/ shares (bench imports nothing from tests/)."""

from slim.testing.adapter import make_tiny_adapter  # noqa: F401
