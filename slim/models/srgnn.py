"""SR-GNN (Wu et al. 2019): session graph + gated GNN + soft-attention readout.

The whole batch is one block-diagonal graph: node = (session, distinct item), built with `torch.unique` and a
sparse edge list, so no per-session Python loop and no [B, n, n] dense padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SRGNNConfig:
    steps: int = 1  # GNN propagation steps


def session_graph(items: torch.Tensor, lengths: torch.Tensor):
    """items: [B, L] right-padded. Returns node item ids [M], alias [B, L] (node of each position, -1 at
    padding) and the distinct directed edges (src [E], dst [E]) with in/out normalised weights [E]."""
    b, l = items.shape
    valid = torch.arange(l, device=items.device)[None] < lengths[:, None]  # [B, L]
    key = torch.arange(b, device=items.device)[:, None] * (items.max() + 1) + items  # unique per (session, item)
    uniq, inv = torch.unique(key[valid], return_inverse=True)  # uniq: [M]
    alias = torch.full_like(items, -1)
    alias[valid] = inv
    nodes = uniq % (items.max() + 1)
    m = uniq.numel()
    edge_ok = valid[:, 1:]  # [B, L-1] edge t -> t+1 exists when t+1 is valid
    src, dst = alias[:, :-1][edge_ok], alias[:, 1:][edge_ok]
    e = torch.unique(src * m + dst)  # SR-GNN counts each distinct edge once
    src, dst = e // m, e % m
    ones = torch.ones_like(src, dtype=torch.float32)
    out_deg = torch.zeros(m, device=items.device).index_add_(0, src, ones)
    in_deg = torch.zeros(m, device=items.device).index_add_(0, dst, ones)
    # A_in[v, u] = 1/in_deg(v) for an edge u -> v ; A_out[u, v] = 1/out_deg(u)
    return nodes, alias, (src, dst, ones / in_deg[dst], ones / out_deg[src])


class SRGNN(nn.Module):
    per_position = False  # one readout per session: training expands prefixes

    def __init__(self, hidden: int, cfg: SRGNNConfig, max_len: int):
        super().__init__()
        self.steps = cfg.steps
        self.w_in = nn.Linear(hidden, hidden)
        self.w_out = nn.Linear(hidden, hidden)
        self.gate_i = nn.Linear(2 * hidden, 3 * hidden)
        self.gate_h = nn.Linear(hidden, 3 * hidden)
        self.w1 = nn.Linear(hidden, hidden, bias=False)
        self.w2 = nn.Linear(hidden, hidden)
        self.q = nn.Linear(hidden, 1, bias=False)
        self.w3 = nn.Linear(2 * hidden, hidden, bias=False)

    def _cell(self, edges, h: torch.Tensor) -> torch.Tensor:
        # h: [M, H]; gated (GRU-style) update from in- and out-neighbour messages (A_in h, A_out h as scatters).
        src, dst, w_in, w_out = edges
        # sums in the messages' dtype: under bf16 autocast they are bf16 while h may still be fp32
        msg_in, msg_out = w_in[:, None] * self.w_in(h)[src], w_out[:, None] * self.w_out(h)[dst]
        m_in = h.new_zeros(h.shape, dtype=msg_in.dtype).index_add_(0, dst, msg_in)
        m_out = h.new_zeros(h.shape, dtype=msg_out.dtype).index_add_(0, src, msg_out)
        a = torch.cat([m_in, m_out], dim=-1)
        i_r, i_z, i_n = self.gate_i(a).chunk(3, -1)
        h_r, h_z, h_n = self.gate_h(h).chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * h + z * n

    def forward(self, x: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # x: [B, L, H] item vectors (used for the node states), items: [B, L] ids -> session vector [B, H]
        nodes, alias, edges = session_graph(items, lengths)
        b, l, hdim = x.shape
        valid = alias >= 0
        # A node's state starts as its item's vector, taken from its first position (one gradient path each).
        flat = torch.arange(b * l, device=x.device).view(b, l)[valid]
        first = torch.full((nodes.numel(),), b * l, device=x.device).scatter_reduce(0, alias[valid], flat, "amin")
        h = x.reshape(b * l, hdim)[first]  # [M, H]
        for _ in range(self.steps):
            h = self._cell(edges, h)
        seq = h[alias.clamp_min(0)] * valid.unsqueeze(-1)  # [B, L, H]
        last = seq[torch.arange(b, device=x.device), lengths - 1]  # [B, H]
        alpha = self.q(torch.sigmoid(self.w1(last)[:, None] + self.w2(seq)))  # [B, L, 1]
        s_g = (alpha * seq * valid.unsqueeze(-1)).sum(1)  # [B, H]
        return self.w3(torch.cat([last, s_g], dim=-1))
