from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import pytest

from slim.runtime import config
from slim.runner import stages

CONFIGS = sorted((Path(__file__).parent.parent.parent / "configs").glob("*.yaml"))


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


def test_run_dir_local_or_object_store(tmp_path):
    from slim.io.rundir import RunDir

    # object storage: paths stay URIs (tests/io/test_storage.py writes and reads them on a local S3 server)
    assert str(RunDir("s3://bucket/runs").path("data")) == "s3://bucket/runs/data"
    rd = RunDir(tmp_path / "run")
    assert rd.stage_dir("data") == tmp_path / "run" / "data" and (tmp_path / "run" / "data").is_dir()


# --- issue 21: checked at load, with the allowed values in the message ---

def test_numeric_strings_yaml_leaves_as_strings(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-4\n  epochs: 5e1\n  batch_size: 1_024\n")
    cfg = stages.load("train", config.load_raw(p, ["train.hidden=6.4e1"]))
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.batch_size, cfg.hidden) == (1e-3, 5e-4, 50, 1024, 64)
    assert isinstance(cfg.epochs, int) and isinstance(cfg.lr, float)
    t = config.build(Toy, {"lr": "-2.5e+2", "epochs": "5e4"})
    assert (t.lr, t.epochs) == (-250.0, 50000)
    with pytest.raises(config.ConfigError, match=r"train.epochs: expected int, got '1e-3'"):
        config.build(Toy, {"epochs": "1e-3"}, "train")
    with pytest.raises(config.ConfigError, match="train.lr: expected float, got str 'fast'"):
        config.build(Toy, {"lr": "fast"}, "train")


def _allowed(values):
    return "".join(f"(?=.*'{v}')" for v in values)  # every allowed value appears in the message


@pytest.mark.parametrize("override,key,allowed", [
    ("evaluate.protocols=[uni100,ful]", r"evaluate\.protocols\[1\]", "EVAL"),
    ("evaluate.split=tset", r"evaluate\.split", ("valid", "test")),
    ("train.test_protocols=[uni100,pop50]", r"train\.test_protocols\[1\]", "EVAL"),
    ("train.valid_protocol=full_keep", r"train\.valid_protocol", ("full", "uni100", "pop100")),
    ("train.rationale_positions=[all,every]", r"train\.rationale_positions\[1\]", ("after_prefix", "all")),
    ("train.backbones=[gru4rec,bert4rec]", r"train\.backbones\[1\]", "BACKBONES"),
    ("train.variants=[idtext]", r"train\.variants\[0\]", "VARIANTS"),
    ("train.losses=[bpr]", r"train\.losses\[0\]", ("bce", "ce")),
    ("student.engine=sglang", r"student\.engine", ("vllm", "hf")),
    ("distill.strategy=fsdp", r"distill\.strategy", ("ddp", "deepspeed")),
])
def test_enumerated_fields_checked_at_load(override, key, allowed):
    """The first five were only checked deep inside a later stage (or never); the last four were Literal already."""
    if allowed == "EVAL":  # the single constant evaluation is written against
        from slim.io.columns import EVAL_PROTOCOLS as allowed
    elif allowed == "BACKBONES":
        from slim.models import REGISTRY

        allowed = tuple(REGISTRY)
    elif allowed == "VARIANTS":
        from slim.models.item_repr import VARIANTS as allowed
    with pytest.raises(config.ConfigError, match=key + r": .*is not one of " + _allowed(allowed)):
        stages.load_all(config.load_raw(CONFIGS[0], [override]))


def test_min_history_below_3_rejected_at_load():
    with pytest.raises(config.ConfigError, match=r"data\.min_history: 2 is below 3.*leave-one-out"):
        stages.load("data", config.load_raw(None, ["data.min_history=2"]))
    assert stages.load("data", config.load_raw(None, ["data.min_history=3"])).min_history == 3


@pytest.mark.parametrize("text,key", [
    ("train: 5\n", r"train: expected a mapping of keys, got int 5"),
    ("train:\n  sasrec: 2\n", r"train\.sasrec: expected a mapping of keys, got int 2"),
    ("teacher:\n  prompt: [a, b]\n", r"teacher\.prompt: expected a mapping of keys, got list"),
])
def test_non_mapping_section_names_the_key(tmp_path, text, key):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(config.ConfigError, match=key):
        stages.load_all(config.load_raw(p))


def test_unreadable_values_named_by_key_or_file(tmp_path):
    """A value YAML cannot read (a date that is no date, an unclosed list) is a ConfigError naming the key or the
    file, not a parser's traceback; a readable one still loads."""
    for bad in ("data.until=2024-13-45", "train.seeds=[0, 1"):
        with pytest.raises(config.ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
            config.parse_overrides([bad])
    assert str(config.parse_overrides(["data.until=2024-01-31"])["data"]["until"]) == "2024-01-31"
    f = tmp_path / "bad.yaml"
    f.write_text("data:\n  until: 2024-13-45\n")
    with pytest.raises(config.ConfigError, match="bad.yaml: not valid YAML"):
        config.load_raw(f)
