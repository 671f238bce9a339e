"""The tests' import path of slim/testing/rundata.py, which bench/ shares (bench imports nothing from tests/)."""

from slim.testing.rundata import BRANDS, CATS, write_data_stage  # noqa: F401
