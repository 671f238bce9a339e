"""Ways to use item text besides the paper's concatenation (train.text_fusions; issue: item text that helps full
ranking). Each is measured against `concat`, the default the paper's tables use.

  concat  e_i = g_f([g_l(t_i); E_i])                      the paper's (slim.models.item_repr)
  init    e_i = E_i, E initialised from a PCA projection of the text vectors, then trained (LLMInit-style)
  sum     score = score_id + w * score_text: an ID model and a text-only model trained side by side, each on its
          own loss, w tuned on the validation split after training (EnsRec-style late fusion)
  align   concat, plus an InfoNCE loss pulling E_i towards g_l(t_i) for the batch's target items (contrastive
          alignment of the ID and text spaces, LLM-ESR / LLMEmb-style)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FUSIONS = ("concat", "init", "sum", "align")
SUM_WEIGHTS = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # w; "text only" is the text run itself


def text_init(text: np.ndarray, hidden: int, std: float = 0.02) -> torch.Tensor:
    """[N+1, D] text vectors -> [N+1, hidden] ID-table init: the top `hidden` principal directions, scaled to the
    ID table's usual init std so training dynamics match `id` and only the geometry differs. Row 0 stays zero."""
    t = torch.tensor(np.asarray(text[1:], dtype=np.float32))
    t = t - t.mean(0, keepdim=True)
    k = min(hidden, t.shape[1], t.shape[0])
    _, _, v = torch.linalg.svd(t, full_matrices=False)  # v: [min(N, D), D]
    z = t @ v[:k].T  # [N, k]
    z = z / z.std().clamp_min(1e-8) * std
    out = torch.zeros(len(text), hidden)
    out[1:, :k] = z
    if k < hidden:  # more dimensions than the text has: the rest as the plain random init
        out[1:, k:] = torch.randn(len(text) - 1, hidden - k) * std
    return out


def align_loss(id_vecs: torch.Tensor, text_vecs: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of items: [M, H] ID vectors and [M, H] projected text vectors of the same
    items; item m's ID vector should be closest to item m's text vector."""
    a, b = F.normalize(id_vecs, dim=-1), F.normalize(text_vecs, dim=-1)
    logits = a @ b.T / tau  # [M, M]
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class ScoreSum(nn.Module):
    """Late fusion of two Recommenders (an `id` one and a `text` one), each trained on its own loss."""

    def __init__(self, id_model: nn.Module, text_model: nn.Module):
        super().__init__()
        self.id_model, self.text_model = id_model, text_model
        self.members = (id_model, text_model)  # batch_loss trains each on its own loss
        self.register_buffer("w", torch.tensor(1.0))
        self.per_position = id_model.per_position
        self.num_items = id_model.num_items
        self.hidden = id_model.items.id_emb.embedding_dim

    def encode(self, items, lengths, user_text=None, use=None) -> torch.Tensor:
        return torch.cat([self.id_model.encode(items, lengths), self.text_model.encode(items, lengths)], -1)

    def score_all(self, s: torch.Tensor) -> torch.Tensor:
        h = self.hidden
        return self.id_model.score_all(s[..., :h]) + self.w * self.text_model.score_all(s[..., h:])

    def score(self, s: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        h = self.hidden
        return self.id_model.score(s[..., :h], cand) + self.w * self.text_model.score(s[..., h:], cand)
