"""Item and user representations around a backbone: ID embeddings, item-text fusion, user-text fusion.

Variants (the paper's names):
  id       e_i = E[i]
  id_text  e_i = g_f([E[i]; g_l(t_i)])     ("+": ID embedding fused with a projection of the item-text embedding)
  text     e_i = g_l(t_i)                   (text only, no ID table)
The fusion layers are plain linear/ReLU modules (`Fusion`), the same ones SLIM uses on the user side:
  s_u = g_f([g_l(s_text); s_seq])
so a SLIM variant plugs in by passing a user-text embedding to `Recommender.encode` without touching backbones.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

ITEM_VARIANTS = ("id", "id_text", "text")
# train.variants: the item variants, SLIM (items as id_text, users fused with the student's or the teacher's
# rationale), the no-LLM control history_text (fused exactly as slim, with the encoded titles of the prefix the
# prompt showed instead of a rationale) and the ID-agnostic text matcher (slim.models.user_repr).
FUSED_USER_VARIANTS = ("slim", "slim_teacher", "history_text")
VARIANTS = ITEM_VARIANTS + FUSED_USER_VARIANTS + ("text_match",)
USER_TEXT_VARIANTS = FUSED_USER_VARIANTS + ("text_match",)


def item_variant(variant: str) -> str:
    """The item side of a train variant: SLIM's items are the paper's id_text."""
    return "id_text" if variant in FUSED_USER_VARIANTS else variant


class Fusion(nn.Module):
    """g_l: text -> hidden (Linear + ReLU); g_f: [g_l(text); other] -> hidden (Linear)."""

    def __init__(self, text_dim: int, hidden: int):
        super().__init__()
        self.g_l = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU())
        self.g_f = nn.Linear(2 * hidden, hidden)

    def project(self, text: torch.Tensor) -> torch.Tensor:
        return self.g_l(text)

    def forward(self, text: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        # text: [..., text_dim], other: [..., hidden] -> [..., hidden]
        return self.g_f(torch.cat([self.g_l(text), other], dim=-1))


class ItemRepr(nn.Module):
    """Item vectors for ids 0..N (0 = padding, always the zero vector)."""

    def __init__(self, num_items: int, hidden: int, variant: str = "id", text: Optional[np.ndarray] = None):
        super().__init__()
        if variant not in ITEM_VARIANTS:
            raise ValueError(f"unknown item variant {variant!r}; variants: {ITEM_VARIANTS}")
        if variant != "id":
            if text is None:
                raise ValueError(f"variant {variant!r} needs an item-text embedding table")
            if text.shape[0] != num_items + 1:
                raise ValueError(f"item-text table has {text.shape[0]} rows, expected num_items+1={num_items + 1}")
        self.variant = variant
        self.num_items = num_items
        self.id_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0) if variant != "text" else None
        if self.id_emb is not None:
            # Small init (RecBole/BERT's 0.02): initial scores near 0 keep BCE/BPR gradients unsaturated. With
            # std hidden**-0.5 SASRec needed 4 epochs to reach what this reaches in 1 (bench/results/recommenders.md).
            nn.init.normal_(self.id_emb.weight, std=0.02)
            with torch.no_grad():
                self.id_emb.weight[0].zero_()
        if variant != "id":
            # Frozen text features: a buffer, saved with the weights so a checkpoint is self-contained.
            self.register_buffer("text", torch.tensor(np.asarray(text, dtype=np.float32)), persistent=True)
            self.fusion = Fusion(self.text.shape[1], hidden)
        else:
            self.text = None
            self.fusion = None

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        # items: [...] int64 -> [..., hidden]; padding rows are zeroed so backbones see exact zeros there.
        if self.variant == "id":
            return self.id_emb(items)
        t = self.text[items]
        out = self.fusion.project(t) if self.variant == "text" else self.fusion(t, self.id_emb(items))
        return out * (items != 0).unsqueeze(-1).to(out.dtype)

    def table(self) -> torch.Tensor:
        """[N+1, hidden]: every item's vector, for full scoring."""
        return self.forward(torch.arange(self.num_items + 1, device=self._device()))

    def _device(self) -> torch.device:
        return next(self.parameters()).device
