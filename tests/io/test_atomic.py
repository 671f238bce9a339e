"""slim.io.atomic: a file or folder appears whole or not at all; a failed writer leaves the old content."""

import pytest

from slim.io import atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = atomic.write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic.writing(p) as tmp:
            tmp.write_text('{"a": 2, "half')
            raise RuntimeError("killed mid-write")
    assert p.read_text() == '{\n  "a": 1\n}' and sorted(x.name for x in tmp_path.iterdir()) == ["m.json"]


def test_folder_replaced_whole_and_leftovers_cleaned(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with atomic.writing(tmp_path / "out", replace_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [x.name for x in (tmp_path / "out").iterdir()] == ["new.txt"]
    (tmp_path / ".tmp-out").mkdir()  # what a killed writer leaves
    (tmp_path / ".shard.parquet.tmp").write_text("x")
    assert atomic.clean_tmp(tmp_path) == 2 and [x.name for x in tmp_path.iterdir()] == ["out"]
