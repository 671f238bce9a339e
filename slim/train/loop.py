"""One training run: a backbone x variant x seed on SeqData, with early stopping on the validation split."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from slim.models import Recommender, ScoreSum, TextMatch
from slim.models.fusion import SUM_WEIGHTS
from slim.recsys import data as recdata
from slim.recsys.ranking import evaluate
from slim.recsys.spec import RunSpec, build_model
from slim.recsys.usertext import UserText
from slim.runtime.threads import torch_threads

log = logging.getLogger(__name__)


@dataclass
class Batches:
    """Training tensors and, for user-text models, the rationale of each example and where it may be fused."""
    x: torch.Tensor  # [E, L]
    y: torch.Tensor  # [E, L] per-position, [E] session models
    lens: torch.Tensor  # [E]
    text: Optional[torch.Tensor] = None  # [E, Du]
    use: Optional[torch.Tensor] = None  # like y, bool

    def take(self, idx: torch.Tensor) -> tuple:
        L = int(self.lens[idx].max())  # trim padding columns: shorter batches cost less
        cut = (lambda t: t[idx, :L] if t.dim() == 2 else t[idx])
        return (self.x[idx, :L], cut(self.y), self.lens[idx],
                None if self.text is None else self.text[idx], None if self.use is None else cut(self.use))


def example_arrays(per_position: bool, text_only: bool, seqs: list, max_len: int, vec=None, present=None,
                   cut: int = 0, positions: str = "after_prefix") -> dict:
    """The training examples of `seqs` as numpy columns, [E, max_len] wide whatever the longest example (a Ray Data
    block of users gives the same columns as the whole set): x, y, lens, user (row in seqs), pos (index in that
    user's item_ids of the example's last target: (user, pos) names an example) and, with rationale vectors
    (vec [U, Du], present [U]), text and use. text_only (the text matcher) keeps only targets where a rationale
    is fused (positions: after_prefix, one per user: item_ids[-3]; all: every target); per_position: windows for
    causal backbones, else prefixes."""
    ex = (recdata.train_windows if per_position else recdata.train_prefixes)(seqs, max_len)
    w = (lambda a, fill=0: np.pad(a, ((0, 0), (0, max_len - a.shape[1])), constant_values=fill) if a.ndim == 2 else a)
    cols = {"x": w(ex.x), "y": w(ex.y), "lens": ex.lens, "user": ex.user,
            "pos": ex.tpos.max(axis=1) if ex.tpos.ndim == 2 else ex.tpos}
    if vec is None:
        return cols
    # where the rationale is fused
    after = recdata.rationale_positions(ex.tpos, ex.user, np.array([len(s) for s in seqs]), cut, positions)
    have = present[ex.user]  # [E]
    cols.update(text=vec[ex.user], use=w(after & (have[:, None] if after.ndim == 2 else have), False))
    if text_only:  # no sequence model: it learns only from targets after the prefix
        cols = {k: v[after] for k, v in cols.items()}
    return cols


def examples(model, d: recdata.SeqData, max_len: int, ut: Optional[UserText] = None,
             positions: str = "after_prefix") -> Batches:
    """All of d's training examples as tensors (the fan-out path; Ray Train reads them in shards: recsys.ingest)."""
    c = example_arrays(model.per_position, isinstance(model, TextMatch), d.seqs, max_len,
                       *((ut.vec, ut.present, ut.cut, positions) if ut is not None else ()))
    t = (lambda k: torch.from_numpy(c[k]) if k in c else None)
    return Batches(t("x"), t("y"), t("lens"), t("text"), t("use"))


def rows_per_batch(spec: RunSpec, y: torch.Tensor) -> int:
    return batch_rows(spec, None if y.dim() == 1 else float((y > 0).sum()) / max(1, len(y)))


def batch_rows(spec: RunSpec, targets_per_row: Optional[float]) -> int:
    """batch_size counts next-item targets (as a RecBole row is one target): a window of a per-position model
    holds several targets (targets_per_row; None: one, session models), so fewer windows go in a batch and an
    epoch takes as many optimizer steps."""
    if targets_per_row is None:
        return spec.batch_size
    return max(1, round(spec.batch_size / max(targets_per_row, 1.0)))


def batch_loss(model, spec: RunSpec, x, y, lens, gen: torch.Generator, text=None, use=None,
               present: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
    """Loss of one batch and its number of next-item targets. text: [B, Du] rationales, use: like y (bool).
    present: [P] the item ids of the newest snapshot (recsys.data.present_ids), None when every id is: absent items
    are never a sampled negative (bce) and take no share of the softmax (ce)."""
    if isinstance(model, ScoreSum):  # late fusion: each member trains on its own loss, the sum only scores
        parts = [batch_loss(m, spec, x, y, lens, gen, present=present) for m in model.members]
        return sum(p[0] for p in parts), parts[0][1]
    if model.per_position:
        h = model.states(x, lens, text, use)  # [B, L, H]
        mask = y > 0
        s, tgt = h[mask], y[mask]  # [T, H], [T]
    else:
        s, tgt = model.encode(x, lens, text, use), y  # [B, H], [B]
    aux = model.aux_loss(torch.unique(tgt)) if isinstance(model, Recommender) else None
    extra = aux if aux is not None else 0.0
    if spec.loss == "ce":
        logits = model.score_all(s)  # [T, N+1]
        logits[:, 0] = float("-inf")
        if present is not None:
            keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
            keep[present.to(logits.device)] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        return F.cross_entropy(logits, tgt) + extra, len(tgt)
    neg = negatives(tgt, spec.num_negatives, model.num_items, gen, present)
    pos_s = model.score(s, tgt[:, None])  # [T, 1]
    neg_s = model.score(s, neg)  # [T, K]
    loss = F.binary_cross_entropy_with_logits(pos_s, torch.ones_like(pos_s)) + \
        F.binary_cross_entropy_with_logits(neg_s, torch.zeros_like(neg_s))
    return loss + extra, len(tgt)


def negatives(tgt: torch.Tensor, k: int, n: int, gen: torch.Generator,
              present: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[T, k] item ids drawn uniformly (CPU generator) over 1..n, or over `present` when given; never the target
    itself (a draw that hits it takes the next id). With present None the draws are the ones before absent items
    existed, so a run with every item present trains exactly as before."""
    if present is None:
        neg = torch.randint(1, n + 1, (len(tgt), k), generator=gen).to(tgt.device)
        return torch.where(neg == tgt[:, None], neg % n + 1, neg)
    pick = torch.randint(0, len(present), (len(tgt), k), generator=gen)  # as many draws as the plain path
    ids = present.to(tgt.device)
    neg = ids[pick.to(tgt.device)]
    return torch.where(neg == tgt[:, None], ids[(pick.to(tgt.device) + 1) % len(ids)], neg)


class EarlyStop:
    """Per-epoch history, the best weights by valid NDCG@10, and the stop decision; shared by `fit` and the Ray
    Train loop so both write the same record. valid_protocol: train.valid_protocol, given by the caller."""

    def __init__(self, patience: int, valid_protocol: str):
        self.patience, self.best, self.best_state, self.bad, self.history = patience, -1.0, None, 0, []
        self.valid_protocol = valid_protocol

    def update(self, model, epoch: int, loss: float, ndcg10: float, valid_s: float = 0.0) -> bool:
        """Record one epoch; True when `patience` epochs in a row did not improve. An epoch whose loss is not
        finite has diverged: it is never the best, whatever its metrics. valid_s: what the validation took (the
        cost of selecting on full ranking shows here, beside the epoch's training seconds)."""
        self.history.append({"epoch": epoch, "loss": loss, "valid_ndcg10": ndcg10, "valid_s": valid_s})
        if math.isfinite(loss) and math.isfinite(ndcg10) and ndcg10 > self.best:
            self.best, self.best_state, self.bad = ndcg10, copy.deepcopy(model.state_dict()), 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def record(self, model, spec: RunSpec, d: recdata.SeqData, protocols, n_targets: int, t_train: float,
               ut: Optional[UserText] = None, ev=None) -> dict:
        """Loads the best weights into `model`; its metrics record (valid and test on `protocols`).
        ev(model, split, protocols, max_len, ut): how to evaluate (default: `evaluate` on d in this process)."""
        ev = ev or (lambda m, split, ps, max_len, u: evaluate(m, d, split, ps, max_len, u))
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        extra = {"item_norms": item_norms(model)}
        if isinstance(model, ScoreSum):
            extra["sum_weight"] = tune_sum(model, d, self.valid_protocol, spec.max_len)
        best = [h["valid_ndcg10"] if math.isfinite(h["loss"]) else -1.0 for h in self.history]
        return {**extra,
            "run": spec.name, "backbone": spec.backbone, "variant": spec.variant, "seed": spec.seed,
            "loss": spec.loss, "rationale_field": spec.rationale_field, "text_fusion": spec.text_fusion,
            "positions": spec.positions if spec.rationale_field else "", "valid_protocol": self.valid_protocol,
            "best_valid_ndcg10": self.best, "diverged": self.best_state is None,
            "best_epoch": int(np.argmax(best)),
            "epochs_run": len(self.history), "history": self.history,
            "train_targets": n_targets, "train_seconds": t_train, "targets_per_s": n_targets / max(t_train, 1e-9),
            "valid": ev(model, "valid", protocols, spec.max_len, ut),
            "test": ev(model, "test", protocols, spec.max_len, ut),
        }


@torch.no_grad()
def tune_sum(model: ScoreSum, d: recdata.SeqData, protocol: str, max_len: int) -> float:
    """Late fusion's weight: the w of score_id + w * score_text with the best validation NDCG@10 (ties: smaller w)."""
    got = []
    for w in SUM_WEIGHTS:
        model.w.fill_(w)
        got.append((evaluate(model, d, "valid", (protocol,), max_len)[protocol]["NDCG@10"], -w))
    w = -max(got)[1]
    model.w.fill_(w)
    return w


@torch.no_grad()
def item_norms(model) -> dict:
    """Mean L2 norm over items of the ID vectors, the projected text g_l(t_i) and the fused item vectors: whether
    the text projection drowns the IDs (or the reverse) is one candidate for why concat hurts full ranking."""
    items = getattr(model, "items", None)
    if items is None:
        return {}
    out = {"item": float(items.table()[1:].norm(dim=-1).mean())}
    if items.id_emb is not None:
        out["id"] = float(items.id_emb.weight[1:].norm(dim=-1).mean())
    if items.fusion is not None:
        out["text_projection"] = float(items.fusion.project(items.text[1:]).norm(dim=-1).mean())
    return out


@dataclass(frozen=True)
class Hooks:
    """How one process trains an epoch, the part `fit` (one process) and a Ray Train worker
    (slim.train.distributed) do differently; `train_epochs` is the loop they share."""
    # epoch -> this process's steps of the epoch, each ((x, y, lens, text, use), weight); called before any
    # negative of the epoch is drawn, so a shared generator keeps its order. The loss is multiplied by weight
    # before backward: 1 in one process; a Ray Train rank's share of the step's targets times the world size (DDP
    # averages the ranks' gradients: so the step follows the mean over all its targets, as one process would); 0
    # for a placeholder batch, a step on no example that keeps the collectives in step once a rank's shard ran out
    batches: Callable[[int], Iterable[tuple[tuple, float]]]
    forward: Callable[..., tuple[torch.Tensor, int]]  # (x, y, lens, gen, text, use) -> (loss, targets)
    backward: Callable[[torch.Tensor], None]  # (loss)
    step: Callable[[], None]  # updates and clears the gradients
    end_epoch: Callable[[int, float, float], bool]  # (epoch, mean loss, start time) -> True to stop


def train_epochs(spec: RunSpec, model, hooks: Hooks, gen: torch.Generator) -> tuple[int, float]:
    """The epoch loop shared by `fit` and the Ray Train workers, at most spec.epochs, until hooks.end_epoch says
    stop. Returns (targets trained on by this process, training seconds)."""
    n_targets, t_train = 0, 0.0
    for epoch in range(spec.epochs):
        model.train()
        t0, total, count = time.perf_counter(), 0.0, 0
        for batch, weight in hooks.batches(epoch):
            loss, n = hooks.forward(*batch[:3], gen, *batch[3:])
            n = n if weight else 0
            hooks.backward(loss * weight)
            hooks.step()
            total += float(loss.detach()) * n
            count += n
        t_train += time.perf_counter() - t0
        n_targets += count
        if hooks.end_epoch(epoch, total / max(1, count), t0):
            break
    return n_targets, t_train


def fit(spec: RunSpec, d: recdata.SeqData, item_text: Optional[np.ndarray], valid_protocol: str,
        test_protocols: tuple, progress=None, ut: Optional[UserText] = None) -> tuple[Recommender, dict]:
    """Train with early stopping on valid NDCG@10 under valid_protocol; returns the best model and its metrics
    record (valid and test under test_protocols). The protocols are train.valid_protocol and train.test_protocols
    (slim.train.settings.RunSettings), said once there. progress(epoch record) is called after every epoch."""
    torch.manual_seed(spec.seed)
    torch_threads(spec.threads)  # train.threads_per_run, at most the cores this process may use
    gen = torch.Generator().manual_seed(spec.seed)  # the permutations and the negatives, in that order
    model = build_model(spec, d.num_items, item_text)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    b = examples(model, d, spec.max_len, ut, spec.positions)
    bs = rows_per_batch(spec, b.y)
    stopper = EarlyStop(spec.patience, valid_protocol)

    def batches(epoch):
        order = torch.randperm(len(b.x), generator=gen)
        return ((b.take(order[i:i + bs]), 1.0) for i in range(0, len(b.x), bs))

    def step():
        opt.step()
        opt.zero_grad()

    def end_epoch(epoch, loss, t0):
        t_val = time.perf_counter()
        val = evaluate(model, d, "valid", (valid_protocol,), spec.max_len, ut)[valid_protocol]
        t_val = time.perf_counter() - t_val
        stop = stopper.update(model, epoch, loss, val["NDCG@10"], t_val)
        if progress:
            progress({"run": spec.name, "epoch": epoch, "loss": loss, "valid_ndcg10": val["NDCG@10"],
                      "seconds": time.perf_counter() - t0, "valid_s": t_val})
        return stop

    present = recdata.present_ids(d.num_items, d.absent)  # None: every item present, the negatives as before
    hooks = Hooks(batches, lambda *a: batch_loss(model, spec, *a, present=present), lambda loss: loss.backward(),
                  step, end_epoch)
    n_targets, t_train = train_epochs(spec, model, hooks, gen)
    return model, stopper.record(model, spec, d, test_protocols, n_targets, t_train, ut)
