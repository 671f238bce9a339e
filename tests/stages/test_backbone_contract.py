"""The backbone contract (slim.models.contract) holds for every registered backbone, and its check finds a backbone
that breaks it: a wrong output shape, a per-position state that sees the future, a `last` that disagrees."""

import dataclasses
import re

import pytest
import torch
from torch import nn

from slim.models import REGISTRY, GRU4RecConfig
from slim.models.contract import ContractError, check_backbone


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_backbone_meets_the_contract(name):
    cls, cfg_cls = REGISTRY[name]
    check_backbone(name, cls, cfg_cls)  # raises ContractError naming the rule


class _Sees(nn.Module):
    """per_position, but each state is the mean over the whole sequence: position t sees t+1..L-1."""
    per_position = True

    def __init__(self, hidden, cfg, max_len):
        super().__init__()
        self.lin = nn.Linear(hidden, hidden)

    def forward(self, x, items, lengths):  # x: [B, L, H] -> [B, L, H]
        return self.lin(x).mean(1, keepdim=True).expand_as(x)


class _Causal(_Sees):
    """The same layer, but a running mean over positions <= t: causal, so it meets the contract."""

    def forward(self, x, items, lengths):
        c = self.lin(x).cumsum(1)  # [B, L, H]
        return c / torch.arange(1, x.shape[1] + 1)[None, :, None]


class _BadLast(_Causal):
    def last(self, x, items, lengths):  # the first position's state instead of the last one's
        return self.forward(x, items, lengths)[:, 0]


class _Flat(_Causal):
    per_position = False  # says one state per sequence but returns [B, L, H]


@dataclasses.dataclass(frozen=True)
class _Cfg:
    unused: int = 0


def test_the_check_finds_each_broken_rule_and_passes_the_fixed_one():
    check_backbone("causal", _Causal, _Cfg)  # the signal's absence: a conforming toy passes
    for cls, rule in ((_Sees, "see later positions"), (_BadLast, "last(...)"), (_Flat, "expected (4, 16)")):
        with pytest.raises(ContractError, match=re.escape(rule)) as e:
            check_backbone("toy", cls, _Cfg)
        assert "'toy'" in str(e.value)
    with pytest.raises(ContractError, match="per_position"):
        check_backbone("toy", type("NoFlag", (nn.Module,), {}), GRU4RecConfig)
    with pytest.raises(ContractError, match="its own forward"):  # a Module without forward: Module's, which raises
        check_backbone("toy", type("NoForward", (nn.Module,), {"per_position": True}), _Cfg)
