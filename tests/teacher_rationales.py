"""The tests' import path of slim/testing/teacher_mock.py, which bench/ shares (bench imports nothing from tests/)."""

from slim.testing.teacher_mock import rationale, write_teacher_shards  # noqa: F401
