"""Data preparation: sources -> chronological sequences, leave-one-out split, fixed candidates."""

from slim.data.stage import DataConfig, run
from slim.data.sources import DataError

__all__ = ["DataConfig", "DataError", "run"]
