"""One training run's trail: the stage builds the runs' shared settings once and hands them down (nothing below the
stage reads its config, not even in an annotation), the lower functions take the protocols from their caller (no
default of their own), and a new backbone is its module plus one registry line (its config section comes from the
registry)."""

import dataclasses
import inspect
import subprocess
import sys
import textwrap

import grimp

from slim.train import stage as job
from slim.train.loop import EarlyStop, fit
from slim.train.settings import RunSettings


def test_nothing_below_the_train_stage_imports_it_annotations_included():
    """The fan-out, Ray Train, search and loop modules never import slim.train.stage, under `if TYPE_CHECKING:`
    included (the graph is built with those imports, as lint-imports builds it with .importlinter's
    exclude_type_checking_imports = False; at c80c2e8 fanout, search and search_plan did)."""
    graph = grimp.build_graph("slim", exclude_type_checking_imports=False, cache_dir=None)
    below = sorted(m for m in graph.find_descendants("slim.train") if m != "slim.train.stage")
    assert {"slim.train.fanout", "slim.train.distributed", "slim.train.search", "slim.train.loop"} <= set(below)
    assert [m for m in below if graph.chain_exists(importer=m, imported="slim.train.stage")] == []
    assert graph.chain_exists(importer="slim.train.stage", imported="slim.train.fanout")  # the stage's, found


def test_the_graph_counts_an_import_made_for_annotations_only(tmp_path, monkeypatch):
    """The mechanism the check above and .importlinter rely on: an import under `if TYPE_CHECKING:` is an edge of
    the graph built with exclude_type_checking_imports=False, and is not one without that setting."""
    pkg = tmp_path / "annotated"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                                "    from annotated.high import Config\n")
    (pkg / "high.py").write_text("from annotated import low\n\nConfig = dict\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for excluded, seen in ((False, True), (True, False)):
        graph = grimp.build_graph("annotated", exclude_type_checking_imports=excluded, cache_dir=None)
        assert graph.chain_exists(importer="annotated.low", imported="annotated.high") is seen


def test_run_settings_carry_the_configs_values():
    """Every field of RunSettings is the same-named TrainConfig setting (max_epochs: epochs), for a config whose
    every such setting differs from its default."""
    cfg = job.TrainConfig(run_dir="runs/elsewhere", valid_protocol="pop100", test_protocols=("full",), epochs=7,
                          ray_address="127.0.0.1:1", num_cpus=3, cpus_per_run=0.5, threads_per_run=2,
                          strategy="ddp", num_workers=4, use_gpu=True, amp="bf16", eval_block_users=9)
    shared, default = job.run_settings(cfg), job.run_settings(job.TrainConfig())
    for f in dataclasses.fields(RunSettings):
        assert getattr(shared, f.name) == getattr(cfg, "epochs" if f.name == "max_epochs" else f.name), f.name
        if f.name != "tracking":  # left at its default: the others must show the config's value, not a default
            assert getattr(shared, f.name) != getattr(default, f.name), f.name


def test_the_protocols_and_hyperparameters_are_said_once():
    """fit and EarlyStop have no protocol of their own (the loop once defaulted to uni100 where the config says
    full); the stage's hyperparameter defaults are RunSpec's."""
    from slim.recsys.spec import RunSpec

    for fn, names in ((fit, ("valid_protocol", "test_protocols")), (EarlyStop.__init__, ("valid_protocol",))):
        params = inspect.signature(fn).parameters
        assert all(params[n].default is inspect.Parameter.empty for n in names), fn
    cfg = job.TrainConfig()
    spec = next(s for s in job.specs(cfg) if s.variant == "id_text")
    run = RunSpec(spec.backbone, spec.variant, spec.seed)  # every hyperparameter left to its default
    keys = ("hidden", "max_len", "epochs", "patience", "batch_size", "lr", "weight_decay", "num_negatives",
            "align_weight", "threads")
    assert {k: getattr(spec, k) for k in keys} == {k: getattr(run, k) for k in keys}


NEW_BACKBONE = '''
"""A backbone the tests add: the mean of the item vectors, scaled, through one linear layer."""
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MeanPoolConfig:
    scale: float = 1.0  # multiplies the mean before the layer


class MeanPool(nn.Module):
    per_position = False

    def __init__(self, hidden: int, cfg: MeanPoolConfig, max_len: int):
        super().__init__()
        self.scale, self.lin = cfg.scale, nn.Linear(hidden, hidden)

    def forward(self, x, items, lengths):  # [B, L, H] -> [B, H]
        return self.lin(self.scale * x.sum(1) / lengths[:, None].float())
'''

SCRIPT = '''
import importlib

import numpy as np
import torch

import meanpool
from slim.runtime.config import ConfigError, build
from slim.train import stage

section = {"backbones": ["meanpool"], "variants": ["id", "id_text"], "seeds": [0], "hidden": 8, "max_len": 6,
           "meanpool": {"scale": 2.0}}
try:  # not registered yet: the section is an unknown key
    build(stage.TrainConfig, section, "train")
    raise SystemExit("an unregistered backbone's section was accepted")
except ConfigError as e:
    print("unregistered:", e)

from slim.models import REGISTRY
from slim.models.contract import check_backbone

REGISTRY["meanpool"] = (meanpool.MeanPool, meanpool.MeanPoolConfig)  # the one registry line
importlib.reload(stage)
cfg = build(stage.TrainConfig, section, "train")
check_backbone("meanpool", *REGISTRY["meanpool"])
from slim.recsys.spec import build_model
from slim.train.loop import batch_loss

for spec in stage.specs(cfg):
    assert spec.backbone_cfg == {"scale": 2.0}, spec
    text = np.random.default_rng(0).normal(size=(21, 4)).astype(np.float32)
    model = build_model(spec, 20, text)
    assert model.backbone.scale == 2.0
    x = torch.tensor([[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 8, 9]])
    loss, n = batch_loss(model, spec, x, torch.tensor([4, 10]), torch.tensor([3, 6]), torch.Generator().manual_seed(0))
    loss.backward()
    print("trained", spec.name, n, float(loss))
'''


def test_a_new_backbone_is_one_module_and_one_registry_line(tmp_path):
    """A backbone module written here and one REGISTRY line: the train config then takes its section
    (train.meanpool.scale), the stage's runs carry it, and a model built from a run trains. Before the line, the
    same section is refused as an unknown key."""
    (tmp_path / "meanpool.py").write_text(NEW_BACKBONE)
    env_path = f"{tmp_path}:{':'.join(p for p in sys.path if p)}"
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "unregistered: unknown key(s) train.meanpool" in out.stdout
    trained = [line for line in out.stdout.splitlines() if line.startswith("trained ")]
    assert [line.split()[1] for line in trained] == ["meanpool-id-bce-s0", "meanpool-id_text-bce-s0"], out.stdout
