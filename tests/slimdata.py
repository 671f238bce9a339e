"""The tests' import path of slim/testing/planted.py, which bench/ shares (bench imports nothing from tests/)."""

from slim.testing.planted import (D, FAST, K, N, U, _embeddings, candidates, run_name, split_metrics,  # noqa: F401
                                  train, users_table, write)
