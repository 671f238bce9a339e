"""One training run: a backbone x variant x seed on SeqData, with early stopping on the validation split."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from slim import metrics as M
from slim.models import REGISTRY, Recommender
from slim.recsys import data as D

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
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

    @property
    def name(self) -> str:
        return f"{self.backbone}-{self.variant}-s{self.seed}"


def build_model(spec: RunSpec, num_items: int, item_text: Optional[np.ndarray]) -> Recommender:
    _, cfg_cls = REGISTRY[spec.backbone]
    return Recommender(spec.backbone, num_items, spec.hidden, cfg_cls(**spec.backbone_cfg), spec.variant,
                       item_text if spec.variant != "id" else None, max_len=spec.max_len)


def examples(model: Recommender, d: D.SeqData, max_len: int):
    """Training tensors: per-position windows for causal backbones, prefixes for session (graph) models."""
    fn = D.train_windows if model.per_position else D.train_prefixes
    x, y, lens = fn(d.seqs, max_len)
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(lens)


def rows_per_batch(spec: RunSpec, y: torch.Tensor) -> int:
    """batch_size counts next-item targets (as a RecBole row is one target): a window of a per-position model
    holds several targets, so fewer windows go in a batch and an epoch takes as many optimizer steps."""
    if y.dim() == 1:
        return spec.batch_size
    per_row = float((y > 0).sum()) / max(1, len(y))
    return max(1, round(spec.batch_size / max(per_row, 1.0)))


def batch_loss(model: Recommender, spec: RunSpec, x, y, lens, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """Loss of one batch and its number of next-item targets."""
    if model.per_position:
        h = model.states(x, lens)  # [B, L, H]
        mask = y > 0
        s, tgt = h[mask], y[mask]  # [T, H], [T]
    else:
        s, tgt = model.encode(x, lens), y  # [B, H], [B]
    if spec.loss == "ce":
        logits = model.score_all(s)  # [T, N+1]
        logits[:, 0] = float("-inf")
        return F.cross_entropy(logits, tgt), len(tgt)
    n = model.items.num_items
    neg = torch.randint(1, n + 1, (len(tgt), spec.num_negatives), generator=gen)  # [T, K]
    neg = torch.where(neg == tgt[:, None], neg % n + 1, neg)  # never the target itself
    pos_s = model.score(s, tgt[:, None])  # [T, 1]
    neg_s = model.score(s, neg)  # [T, K]
    loss = F.binary_cross_entropy_with_logits(pos_s, torch.ones_like(pos_s)) + \
        F.binary_cross_entropy_with_logits(neg_s, torch.zeros_like(neg_s))
    return loss, len(tgt)


@torch.no_grad()
def scores(model: Recommender, seqs: list, max_len: int, cand: Optional[np.ndarray], bs: int = 1024):
    """Scores of candidates [U, C] (cand given) or of every item [U, N+1] (cand None)."""
    model.eval()
    out = []
    for i in range(0, len(seqs), bs):
        x, lens = D.pad_right(seqs[i:i + bs], max_len)
        s = model.encode(torch.from_numpy(x), torch.from_numpy(lens))
        out.append((model.score(s, torch.tensor(cand[i:i + bs])) if cand is not None
                    else model.score_all(s)).numpy())
    return np.concatenate(out)


def evaluate(model: Recommender, d: D.SeqData, split: str, protocols, max_len: int) -> dict:
    """protocol -> metrics (percent). 'full' ranks every item, excluding the user's input history."""
    inputs, res = d.inputs(split), {}
    for proto in protocols:
        if proto == "full":
            ranks = []
            tg = d.targets(split)
            for i in range(0, len(inputs), 1024):  # chunks keep [U, N+1] small
                sc = scores(model, inputs[i:i + 1024], max_len, None)
                ranks.append(M.full_rank(sc, tg[i:i + 1024], inputs[i:i + 1024]))
            ranks = np.concatenate(ranks)
        else:
            ranks = M.target_rank(scores(model, inputs, max_len, d.candidates[(split, proto)]))
        res[proto] = M.metrics_from_ranks(ranks)
    return res


class EarlyStop:
    """Per-epoch history, the best weights by valid NDCG@10, and the stop decision; shared by `fit` and the Ray
    Train loop so both write the same record."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_state, self.bad, self.history = patience, -1.0, None, 0, []

    def update(self, model: Recommender, epoch: int, loss: float, ndcg10: float) -> bool:
        """Record one epoch; True when `patience` epochs in a row did not improve."""
        self.history.append({"epoch": epoch, "loss": loss, "valid_ndcg10": ndcg10})
        if ndcg10 > self.best:
            self.best, self.best_state, self.bad = ndcg10, copy.deepcopy(model.state_dict()), 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def record(self, model: Recommender, spec: RunSpec, d: D.SeqData, protocols, n_targets: int,
               t_train: float) -> dict:
        """Loads the best weights into `model`; its metrics record (valid and test on `protocols`)."""
        model.load_state_dict(self.best_state)
        return {
            "run": spec.name, "backbone": spec.backbone, "variant": spec.variant, "seed": spec.seed,
            "best_valid_ndcg10": self.best,
            "best_epoch": int(np.argmax([h["valid_ndcg10"] for h in self.history])),
            "epochs_run": len(self.history), "history": self.history,
            "train_targets": n_targets, "train_seconds": t_train, "targets_per_s": n_targets / max(t_train, 1e-9),
            "valid": evaluate(model, d, "valid", protocols, spec.max_len),
            "test": evaluate(model, d, "test", protocols, spec.max_len),
        }


def fit(spec: RunSpec, d: D.SeqData, item_text: Optional[np.ndarray] = None, valid_protocol: str = "uni100",
        test_protocols=("uni100", "pop100", "full"), progress=None) -> tuple[Recommender, dict]:
    """Train with early stopping on valid NDCG@10; returns the best model and its metrics record."""
    torch.manual_seed(spec.seed)
    torch.set_num_threads(spec.threads)
    gen = torch.Generator().manual_seed(spec.seed)
    model = build_model(spec, d.num_items, item_text)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    x, y, lens = examples(model, d, spec.max_len)
    bs = rows_per_batch(spec, y)
    stopper, n_targets, t_train = EarlyStop(spec.patience), 0, 0.0
    for epoch in range(spec.epochs):
        model.train()
        t0, total, count = time.perf_counter(), 0.0, 0
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), bs):
            idx = order[i:i + bs]
            L = int(lens[idx].max())  # trim padding columns: shorter batches cost less
            loss, n = batch_loss(model, spec, x[idx, :L], y[idx, :L] if y.dim() == 2 else y[idx], lens[idx], gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * n
            count += n
        t_train += time.perf_counter() - t0
        n_targets += count
        val = evaluate(model, d, "valid", (valid_protocol,), spec.max_len)[valid_protocol]
        stop = stopper.update(model, epoch, total / max(1, count), val["NDCG@10"])
        if progress:
            progress(f"{spec.name} epoch {epoch} loss {total / max(1, count):.4f} valid NDCG@10 {val['NDCG@10']:.2f}")
        if stop:
            break
    return model, stopper.record(model, spec, d, test_protocols, n_targets, t_train)
