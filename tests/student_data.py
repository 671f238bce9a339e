"""The tests' import path of slim/testing/rundata.py, which bench/ shares (bench imports nothing from tests/)."""

from slim.testing.rundata import WORDS, item_titles, write_run_data  # noqa: F401
