"""A run's spec (backbone x variant x loss x seed and its hyperparameters) and the model it builds. Shared by the
train stage, which fits it, and the readers of a saved run (checkpoint.load_model for evaluate, explain, serve)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from slim.models import REGISTRY, Recommender, ScoreSum, TextMatch


@dataclass(frozen=True)
class RunSpec:
    """One run. The hyperparameters' defaults here are the train stage's too (TrainConfig reads them from here);
    those of rationale_field .. positions are also what a run saved before the field existed had."""
    backbone: str
    variant: str
    seed: int
    hidden: int = 64
    max_len: int = 50
    epochs: int = 20
    patience: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "bce"  # "bce": sampled negatives (the paper's loss) | "ce": full softmax
    num_negatives: int = 1
    backbone_cfg: dict = field(default_factory=dict)
    threads: int = 1
    rationale_field: str = ""  # slim / slim_teacher / text_match: whole | step1 | step2 | step3
    user_text_dim: int = 0  # width of the rationale vectors (0: no user text)
    text_fusion: str = "concat"  # how item text is used (slim.models.fusion); concat is the paper's
    align_weight: float = 0.1  # text_fusion=align: weight of the alignment loss
    positions: str = "after_prefix"  # user-text runs: where the text is fused in training (data.rationale_positions)

    @property
    def name(self) -> str:
        # the position mode is part of the name (and the report's row) only where it differs from the default
        at = "@all" if self.rationale_field and self.positions == "all" else ""
        if self.variant == "text_match":  # no backbone: one run per rationale field
            return f"text_match-{self.rationale_field}{at}-{self.loss}-s{self.seed}"
        fusion = "" if self.text_fusion == "concat" else f"+{self.text_fusion}"
        return f"{self.backbone}-{self.variant}{at}{fusion}-{self.loss}-s{self.seed}"


def example_kind(spec: RunSpec) -> tuple[bool, bool]:
    """-> (per_position, text_only): which training examples a run's model takes, read from the backbone's class
    (slim.models.contract), without building the model. text_match has no backbone: one example per prefix."""
    if spec.variant == "text_match":
        return False, True
    return REGISTRY[spec.backbone][0].per_position, False


def build_model(spec: RunSpec, num_items: int, item_text: Optional[np.ndarray]):
    if spec.variant == "text_match":
        return TextMatch(num_items, item_text, spec.user_text_dim)
    _, cfg_cls = REGISTRY[spec.backbone]

    def one(variant: str, fusion: str):
        return Recommender(spec.backbone, num_items, spec.hidden, cfg_cls(**spec.backbone_cfg), variant,
                           item_text if variant != "id" else None, spec.user_text_dim, max_len=spec.max_len,
                           text_fusion=fusion, align_weight=spec.align_weight)

    if spec.text_fusion == "sum":  # an ID model and a text-only model, scores added (slim.models.fusion)
        if spec.rationale_field:
            raise ValueError(f"{spec.name}: text_fusion 'sum' combines two item-side models; use it with id_text")
        return ScoreSum(one("id", "concat"), one("text", "concat"))
    return one(spec.variant, spec.text_fusion if spec.variant != "id" else "concat")
