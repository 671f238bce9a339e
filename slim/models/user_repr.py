"""SLIM's user side and the ID-agnostic text matcher.

UserFusion  s_u = g_f([g_l(r_u); s_seq])    r_u = the encoded rationale of user u (SLIM, Sec. 3.3)
TextMatch   s_u = g_t(r_u), z_i = g_t(t_i), score = <s_u, z_i>    (no IDs, no backbone: the paper's Table 2)

Where a user has no usable rationale (a failed or empty row, an empty prefix), or where fusing it would look ahead
(slim.recsys.data.rationale_positions), a learned "missing" vector stands in for r_u.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from slim.models.item_repr import Fusion


def _missing(text_dim: int) -> nn.Parameter:
    # Rationale vectors are L2-normalised: start the stand-in at a comparable norm (~1).
    return nn.Parameter(torch.randn(text_dim) / text_dim ** 0.5)


def _pick(missing: torch.Tensor, text: Optional[torch.Tensor], use: Optional[torch.Tensor], batch: int):
    """-> [B, Du] rationale vectors with the missing vector where `use` is False (or no text was given)."""
    if text is None:
        return missing.expand(batch, -1)
    if use is None:
        return text
    return torch.where(use[:, None], text, missing)


class UserFusion(nn.Module):
    def __init__(self, text_dim: int, hidden: int):
        super().__init__()
        self.fusion = Fusion(text_dim, hidden)
        self.missing = _missing(text_dim)

    def forward(self, h: torch.Tensor, text: Optional[torch.Tensor], use: Optional[torch.Tensor]) -> torch.Tensor:
        """h: [B, H] or [B, L, H]; text: [B, Du] or None; use: [B] or [B, L] bool (True = fuse the rationale)."""
        g_text = self.fusion.project(text if text is not None else self.missing[None])  # [B or 1, H]
        g_miss = self.fusion.project(self.missing)  # [H]
        if h.dim() == 3:
            g_text = g_text[:, None]  # [B, 1, H]
        if use is None:
            use = torch.full(h.shape[:-1], text is not None, dtype=torch.bool, device=h.device)
        g = torch.where(use[..., None], g_text, g_miss).expand_as(h)
        return self.fusion.g_f(torch.cat([g, h], dim=-1))


class TextMatch(nn.Module):
    """Rationale-to-item-text matching through one shared map g_t, initialised to the identity so that before
    training the score is the plain cosine of the two encoder vectors."""

    per_position = False

    def __init__(self, num_items: int, item_text: np.ndarray, user_text_dim: int):
        super().__init__()
        if item_text.shape[0] != num_items + 1:
            raise ValueError(f"item-text table has {item_text.shape[0]} rows, expected num_items+1={num_items + 1}")
        d = item_text.shape[1]
        if user_text_dim != d:
            raise ValueError(f"text_match needs rationale and item vectors of one encoder: {user_text_dim} != {d}")
        self.num_items = num_items
        self.register_buffer("text", torch.tensor(np.asarray(item_text, dtype=np.float32)), persistent=True)
        self.g_t = nn.Linear(d, d)
        with torch.no_grad():
            self.g_t.weight.copy_(torch.eye(d))
            self.g_t.bias.zero_()
        self.missing = _missing(d)

    def encode(self, items, lengths, user_text=None, use=None) -> torch.Tensor:
        """items/lengths are ignored (ID-agnostic); user_text: [B, D] -> [B, D]."""
        return self.g_t(_pick(self.missing, user_text, use, len(items)))

    def table(self) -> torch.Tensor:
        z = self.g_t(self.text)  # [N+1, D]
        return z * (torch.arange(len(z), device=z.device) > 0)[:, None].to(z.dtype)  # padding row = 0

    def score_all(self, s: torch.Tensor) -> torch.Tensor:
        return s @ self.table().T

    def score(self, s: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return (self.g_t(self.text[cand]) * s.unsqueeze(-2)).sum(-1)
