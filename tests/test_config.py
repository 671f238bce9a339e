from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import pytest

from slim import config, stages

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@dataclass(frozen=True)
class Toy:
    epochs: int = 3
    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"
    name: Optional[str] = None
    dims: tuple[int, ...] = (8, 16)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_loads(path):
    cfgs = stages.load_all(config.load_raw(path))
    assert set(cfgs) == set(stages.names())
    for cfg in cfgs.values():
        with pytest.raises(Exception):  # frozen
            cfg.run_dir = "x"


def test_types_coerced_and_checked():
    t = config.build(Toy, {"epochs": 5, "lr": 1, "dims": [1, 2], "name": "x"})
    assert (t.epochs, t.lr, t.dims, t.name) == (5, 1.0, (1, 2), "x")
    with pytest.raises(config.ConfigError, match="train.epochs"):
        config.build(Toy, {"epochs": "five"}, "train")
    with pytest.raises(config.ConfigError, match="train.mode"):
        config.build(Toy, {"mode": "c"}, "train")
    with pytest.raises(config.ConfigError, match="train.epochz"):
        config.build(Toy, {"epochz": 1}, "train")
    with pytest.raises(config.ConfigError, match="train.epochs"):
        config.build(Toy, {"epochs": True}, "train")


def test_overrides_and_shared_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run_dir: runs/a\ndata:\n  source: ml-100k\n  max_users: 10\n")
    raw = config.load_raw(p, ["data.max_users=50", "run_dir=runs/b", "data.min_history=4"])
    cfg = stages.load("data", raw)
    assert (cfg.max_users, cfg.run_dir, cfg.min_history) == (50, "runs/b", 4)
    with pytest.raises(config.ConfigError, match="data.nope"):
        stages.load("data", config.load_raw(p, ["data.nope=1"]))
    with pytest.raises(config.ConfigError, match="trian"):
        stages.load_all(config.load_raw(p, ["trian.epochs=1"]))
    with pytest.raises(config.ConfigError, match="not key=value"):
        config.parse_overrides(["epochs"])


def test_missing_config_file_named():
    with pytest.raises(config.ConfigError, match="nope.yaml"):
        config.load_raw("nope.yaml")


def test_object_store_run_dir_refused_with_reason(tmp_path):
    from slim.rundir import RunDir

    with pytest.raises(ValueError, match=r"run_dir 's3://bucket/runs'.*not supported"):
        RunDir("s3://bucket/runs")
    rd = RunDir(tmp_path / "run")
    assert rd.stage_dir("data") == tmp_path / "run" / "data" and (tmp_path / "run" / "data").is_dir()
