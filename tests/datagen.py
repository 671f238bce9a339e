"""The tests' import path of slim/testing/sources.py, which bench/ shares (bench imports nothing from tests/)."""

from slim.testing.sources import write_amazon_raw, write_seqrec  # noqa: F401
