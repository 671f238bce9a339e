"""The data-source registry (issue 40 item 1): every registered source reads a small file back as written, and a
new source is one reader plus one registry line: the stage's config check, reading, fingerprint, inputs and
`--check` lines all come from the registry."""

from __future__ import annotations

import gzip
import json

import pytest

from slim.data import DataConfig, registry, sources
from slim.data import stage as prepare
from slim.runtime.config import ConfigError
from slim.testing.sources import write_amazon_raw, write_seqrec


def _rows_and_titles(src_dir):
    with gzip.open(src_dir / "sequences.jsonl.gz", "rt") as f:
        seqs = [json.loads(line) for line in f]
    rows = {(str(s["user_id"]), str(i), int(t)) for s in seqs for i, t in zip(s["item_ids"], s["timestamps"])}
    lines = (src_dir / "items.tsv").read_text().splitlines()[1:]
    return rows, dict(line.split("\t") for line in lines)


def _configs(tmp_path, rows, titles) -> dict:
    """source name -> a DataConfig reading `rows` and `titles` in that source's format."""
    seq = str(tmp_path / "seq")
    (tmp_path / "inter.csv").write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"{i},{t}\n" for i, t in titles.items()))
    rp, mp = write_amazon_raw(tmp_path / "raw", sorted(rows), {i: {"title": t} for i, t in titles.items()})
    return {"jsonl-sequences": DataConfig(source="jsonl-sequences", path=seq),
            "amazon2018-games": DataConfig(source="amazon2018-games", path=seq),
            "interactions-table": DataConfig(source="interactions-table", interactions=str(tmp_path / "inter.csv"),
                                             items=str(tmp_path / "items.csv")),
            "amazon-raw": DataConfig(source="amazon-raw", reviews=str(rp), meta=str(mp)),
            "ml-100k": None}  # the recbole wheel's files: read, not written here


def _read(cfg):
    src = prepare._read(cfg, sources.Problems())
    got = {(u, i, int(t)) for us, its, ts in src.chunks(7) for u, i, t in zip(us, its, ts)}
    return got, src.text()


def test_every_registered_source_round_trips(tmp_path, cache_dir):
    rows, titles = _rows_and_titles(write_seqrec(tmp_path / "seq", 40, 30, seed=3))
    cfgs = _configs(tmp_path, rows, titles)
    assert set(cfgs) == set(registry.REGISTRY)  # a new source needs its case here
    for name, cfg in cfgs.items():
        if cfg is None:
            cfg = DataConfig(source=name, cache_dir=cache_dir)
            got, text = _read(cfg)
            assert len(got) > 99_000 and len(text) == 1682  # MovieLens-100K: 100,000 ratings, 1,682 movies
            continue
        got, text = _read(cfg)
        assert got == rows, name
        assert {i: text[i]["title"] for i in titles} == titles, name
        users, items = prepare.build_tables(cfg, prepare._read(cfg, sources.Problems()), sources.Problems())
        assert users.num_rows == len({u for u, _, _ in rows}) and items.num_rows == len({i for _, i, _ in rows})
        assert set(prepare.input_paths(cfg)) == set(registry.get(name).inputs)
        assert [line.split(":")[0] for line in prepare.resources(cfg, [])] == [f"data.{k}" for k in
                                                                                 registry.get(name).inputs]


def test_a_new_source_is_one_registry_line(tmp_path, monkeypatch):
    """A pipe-separated format: its reader and one line in REGISTRY; the stage reads it, fingerprints its file,
    checks its required key and lists it in --check, without a change to the stage."""
    (tmp_path / "events.psv").write_text("u1|a|10\nu1|b|20\nu1|c|30\nu2|a|15\nu2|c|25\nu2|b|35\n")

    def read_psv(cfg, problems):
        lines = [line.split("|") for line in open(cfg.path).read().splitlines()]
        return sources.Source(lambda n: iter([([u for u, _, _ in lines], [i for _, i, _ in lines],
                                               [int(t) for _, _, t in lines])]),
                              lambda: {i: {"title": f"Item {i}", "category": "", "brand": ""} for i in "abc"})

    monkeypatch.setitem(registry.REGISTRY, "psv", registry.DataSource(read_psv, keys=("path",), inputs=("path",),
                                                                      required=("path",)))
    with pytest.raises(ConfigError, match="path: must be set for source psv"):
        DataConfig(source="psv")
    cfg = DataConfig(source="psv", path=str(tmp_path / "events.psv"))
    users, items = prepare.build_tables(cfg, prepare._read(cfg, sources.Problems()), sources.Problems())
    assert users.num_rows == 2 and items.num_rows == 3
    assert prepare.stage_config(cfg)["source"] == "psv" and "interactions" not in prepare.stage_config(cfg)
    assert list(prepare.own_inputs(cfg)) == [str(tmp_path / "events.psv")]
    assert prepare.resources(cfg, []) == [f"data.path: {tmp_path / 'events.psv'}"]
    with pytest.raises(ConfigError, match="not one of"):
        DataConfig(source="xml")
