"""GRU4Rec (Hidasi et al. 2016) as a per-position sequence encoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GRU4RecConfig:
    layers: int = 1  # stacked GRU layers
    dropout: float = 0.2  # on the input embeddings, as in RecBole's GRU4Rec


class GRU4Rec(nn.Module):
    per_position = True  # one state per position: every next-item target trains in one pass

    def __init__(self, hidden: int, cfg: GRU4RecConfig, max_len: int):
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(hidden, hidden, num_layers=cfg.layers, batch_first=True)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # x: [B, L, H] right-padded item vectors; a GRU is causal, so the states at valid positions never see
        # the padding after them. -> [B, L, H]
        h, _ = self.gru(self.drop(x))
        return self.out(h)
