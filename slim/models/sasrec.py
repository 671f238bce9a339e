"""SASRec (Kang & McAuley 2018): causal self-attention over right-padded sequences."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SASRecConfig:
    layers: int = 2  # self-attention blocks
    heads: int = 2  # attention heads per block
    dropout: float = 0.2  # on embeddings, attention and feed-forward outputs
    ffn_mult: int = 4  # inner size = ffn_mult * hidden (RecBole: inner_size 256 for hidden 64)


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, ffn_mult: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn_mult * hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_mult * hidden, hidden))
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, h = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)  # 3x[B, nh, L, dh]
        # Causal mask: position t attends to 0..t only. With right padding every valid position sees only valid
        # positions, so no key-padding mask is needed and a padded row can never produce NaN.
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.p if self.training else 0.0)
        return self._out(x, a.transpose(1, 2).reshape(b, l, h))

    def _out(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """x: the block's input, a: its attention output (same shape) -> the block's output: post-LN, as in
        SASRec/RecBole."""
        x = self.ln1(x + self.drop(self.proj(a)))
        return self.ln2(x + self.drop(self.ffn(x)))

    def at(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [B, L, H], t: [B] one position per row -> [B, H]: forward(x)[b, t[b]], with the query, projection
        and feed-forward computed at that position only (every key and value is still needed)."""
        b, l, h = x.shape
        dh = h // self.heads
        w, bias = self.qkv.weight, self.qkv.bias  # [3H, H], [3H]: q, k, v rows in that order
        kv = F.linear(x, w[h:], bias[h:]).view(b, l, 2, self.heads, dh).permute(2, 0, 3, 1, 4)  # 2x[B, nh, L, dh]
        xt = x[torch.arange(b, device=x.device), t]  # [B, H]
        q = F.linear(xt, w[:h], bias[:h]).view(b, self.heads, 1, dh)  # [B, nh, 1, dh]
        see = (torch.arange(l, device=x.device)[None] <= t[:, None])[:, None, None]  # [B, 1, 1, L]: causal at t
        a = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=see,
                                           dropout_p=self.p if self.training else 0.0).reshape(b, h)
        return self._out(xt, a)


class SASRec(nn.Module):
    per_position = True

    def __init__(self, hidden: int, cfg: SASRecConfig, max_len: int):
        super().__init__()
        if hidden % cfg.heads:
            raise ValueError(f"sasrec: hidden {hidden} is not divisible by heads {cfg.heads}")
        self.pos = nn.Embedding(max_len, hidden)
        nn.init.normal_(self.pos.weight, std=0.02)  # N(0, 1) by default: positions would drown the item vectors
        self.ln = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(hidden, cfg.heads, cfg.dropout, cfg.ffn_mult) for _ in range(cfg.layers))

    def forward(self, x: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # x: [B, L, H] right-padded -> [B, L, H]
        h = self._embed(x)
        for blk in self.blocks:
            h = blk(h)
        return h

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        # positions count from the first (oldest) kept item
        pos = torch.arange(x.shape[1], device=x.device)
        return self.drop(self.ln(x + self.pos(pos)[None]))

    def last(self, x: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: [B, L, H] right-padded -> [B, H]: forward(...)[b, lengths[b] - 1], the one state ranking and serving
        read; the last block's query, projection and feed-forward run at that position only."""
        h = self._embed(x)
        for blk in self.blocks[:-1]:
            h = blk(h)
        return self.blocks[-1].at(h, lengths - 1)
