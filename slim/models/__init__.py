"""Sequential recommenders: backbones (GRU4Rec, SASRec, SRGNN) composed with item/user representations.

`Recommender.encode(items, lengths, user_text=None) -> [B, H]` is the shared signature: every backbone, every
item variant (id / id_text / text) and the optional SLIM user-text fusion go through it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from slim.models.fusion import FUSIONS, ScoreSum, align_loss, text_init
from slim.models.gru4rec import GRU4Rec, GRU4RecConfig
from slim.models.item_repr import FUSED_USER_VARIANTS, USER_TEXT_VARIANTS, VARIANTS, ItemRepr, item_variant
from slim.models.sasrec import SASRec, SASRecConfig
from slim.models.srgnn import SRGNN, SRGNNConfig
from slim.models.user_repr import TextMatch, UserFusion

# name -> (backbone class, its config class)
REGISTRY: dict[str, tuple[type, type]] = {
    "gru4rec": (GRU4Rec, GRU4RecConfig),
    "sasrec": (SASRec, SASRecConfig),
    "srgnn": (SRGNN, SRGNNConfig),
}


class Recommender(nn.Module):
    """item representation -> backbone -> (optional user-text fusion) -> dot-product scores over items."""

    def __init__(self, backbone: str, num_items: int, hidden: int, backbone_cfg=None, variant: str = "id",
                 item_text: Optional[np.ndarray] = None, user_text_dim: int = 0, *, max_len: int,
                 text_fusion: str = "concat", align_weight: float = 0.0):
        super().__init__()
        if backbone not in REGISTRY:
            raise ValueError(f"unknown backbone {backbone!r}; backbones: {', '.join(REGISTRY)}")
        if text_fusion not in FUSIONS or text_fusion == "sum":  # sum composes two Recommenders (ScoreSum)
            raise ValueError(f"text_fusion {text_fusion!r}: a Recommender takes one of concat, init, align")
        cls, cfg_cls = REGISTRY[backbone]
        if text_fusion == "init" and item_variant(variant) == "id_text":
            self.items = ItemRepr(num_items, hidden, "id")  # an ID table whose start is the text's geometry
            if item_text is not None:  # None when rebuilt from a checkpoint: the weights hold the table
                with torch.no_grad():
                    self.items.id_emb.weight.copy_(text_init(item_text, hidden))
        else:
            self.items = ItemRepr(num_items, hidden, item_variant(variant), item_text)
        self.align_weight = align_weight if text_fusion == "align" else 0.0
        self.backbone = cls(hidden, backbone_cfg or cfg_cls(), max_len)
        # SLIM: s_u = g_f([g_l(r_u); s_seq]) with the same plain linear/ReLU layers as the item side.
        self.user_fusion = UserFusion(user_text_dim, hidden) if user_text_dim else None
        self.per_position = cls.per_position
        self.num_items = num_items

    def states(self, items: torch.Tensor, lengths: torch.Tensor, user_text=None, use=None) -> torch.Tensor:
        """items: [B, L] right-padded, user_text: [B, Du] or None, use: [B, L] bool (where the rationale may be
        fused; elsewhere the learned missing vector) -> [B, L, H] per-position states (per_position backbones)."""
        h = self.backbone(self.items(items), items, lengths)
        if self.user_fusion is not None:
            h = self.user_fusion(h, user_text, use)
        return h

    def encode(self, items: torch.Tensor, lengths: torch.Tensor, user_text=None, use=None) -> torch.Tensor:
        """items: [B, L] right-padded, lengths: [B] >= 1, user_text: [B, Du] or None, use: [B] bool -> [B, H].
        A SLIM model given no user_text uses its missing vector (a user without a rationale)."""
        if hasattr(self.backbone, "last"):  # the last position's state without computing the others' in full
            h = self.backbone.last(self.items(items), items, lengths)
        else:
            h = self.backbone(self.items(items), items, lengths)
            if self.per_position:
                h = h[torch.arange(len(h), device=h.device), lengths - 1]
        if self.user_fusion is not None:
            h = self.user_fusion(h, user_text, use)
        return h

    def aux_loss(self, items: torch.Tensor) -> Optional[torch.Tensor]:
        """text_fusion=align: InfoNCE between the ID and projected text vectors of `items` [M] (unique ids)."""
        if not self.align_weight:
            return None
        e = self.items.id_emb(items)  # [M, H]
        t = self.items.fusion.project(self.items.text[items])  # [M, H]
        return self.align_weight * align_loss(e, t)

    def score_all(self, s: torch.Tensor) -> torch.Tensor:
        """s: [B, H] -> [B, N+1] scores for every item id (column 0 = padding)."""
        return s @ self.items.table().T

    def score(self, s: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """s: [..., H], cand: [..., C] item ids -> [..., C]."""
        return (self.items(cand) * s.unsqueeze(-2)).sum(-1)


def build(backbone: str, num_items: int, hidden: int, backbone_cfg=None, **kw) -> Recommender:
    return Recommender(backbone, num_items, hidden, backbone_cfg, **kw)


__all__ = ["FUSIONS", "ScoreSum", "REGISTRY", "VARIANTS", "USER_TEXT_VARIANTS", "FUSED_USER_VARIANTS", "item_variant",
           "Recommender", "TextMatch", "build", "GRU4RecConfig", "SASRecConfig", "SRGNNConfig"]
