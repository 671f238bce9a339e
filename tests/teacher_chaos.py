"""The tests' import path of slim/testing/chaos.py, which bench/ shares (bench imports nothing from tests/)."""

from slim.testing.chaos import CONFIG, RETRY_AFTER, SCHEDULE, Chaos, billed_in_rows, run_chaos  # noqa: F401
