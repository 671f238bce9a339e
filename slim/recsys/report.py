"""Results tables of the evaluate stage: mean ± std over seeds, chance levels, SLIM's gains with paired tests.

Rows are (backbone, variant) and text_match per rationale field; the losses (bce, the paper's; ce, full softmax)
sit side by side. A gain is the relative change of mean NDCG@10; its paired test compares per-user NDCG@10
(averaged over seeds first) of the two models on the same users: Wilcoxon signed-rank and a paired t-test.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

# a baseline that fuses user text is taken in the same position mode
from slim.models.item_repr import FUSED_USER_VARIANTS

SHOWN = ("NDCG@10", "Hit@10", "Hit@20")
# (better, baseline): every gain the report states. history_text is the no-LLM control: SLIM's gain over it is
# what the LLM's reasoning adds beyond the encoded titles of the same history.
PAIRS = (("slim", "id_text"), ("slim", "history_text"), ("slim", "id"), ("history_text", "id_text"),
         ("id_text", "id"), ("slim_teacher", "id_text"), ("slim_teacher", "slim"))


def row_key(r: dict) -> str:
    """'sasrec-slim', 'sasrec-slim@all' (fused at every training position), 'sasrec-id_text+init' (a fusion),
    'text_match (step3)'."""
    at = "@all" if r.get("positions") == "all" else ""
    if r["variant"] == "text_match":
        return f"text_match ({r['rationale_field']}{at})"
    fusion = r.get("text_fusion") or "concat"
    return f"{r['backbone']}-{r['variant']}{at}" + ("" if fusion == "concat" else f"+{fusion}")


def parse_variant(v: str) -> tuple[str, str, str]:
    """'slim@all+init' -> ('slim', '@all', '+init')."""
    rest, plus, fusion = v.partition("+")
    base, at, mode = rest.partition("@")
    return base, at + mode, plus + fusion


def baselines(v: str) -> list[str]:
    """The row names a row `v` is compared with: PAIRS in the same position mode and fusion, a fusion against id
    and concat, and a row fused at every position against the same row fused after the prefix only."""
    base, at, fusion = parse_variant(v)
    if fusion and not at and base == "id_text":
        return ["id", base]
    out = [b + (at if b in FUSED_USER_VARIANTS else "") + fusion for a, b in PAIRS if a == base]
    return out + ([base + fusion] if at else [])


def ndcg10(ranks: np.ndarray) -> np.ndarray:
    """[U] 0-based ranks -> [U] per-user NDCG@10 (percent)."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < 10, 100.0 / np.log2(r + 2.0), 0.0)


def aggregate(recs: list, protocols) -> dict:
    """Records (one per run, each with eval[protocol][metric]) ->
    {loss: {row: {protocol: {metric: [mean, std, n]}}}}."""
    groups = defaultdict(list)
    for r in recs:
        groups[(r["loss"], row_key(r))].append(r)
    out: dict = defaultdict(dict)
    for (loss, key), rs in sorted(groups.items()):
        row = {"seeds": sorted(r["seed"] for r in rs)}
        for p in protocols:
            row[p] = {m: [float(np.mean([r["eval"][p][m] for r in rs])), float(np.std([r["eval"][p][m] for r in rs])),
                          len(rs)] for m in rs[0]["eval"][p]}
        out[loss][key] = row
    return dict(out)


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-user scores of two models on the same users -> mean gain and p-values (two-sided)."""
    from scipy import stats

    diff = a - b
    res = {"n": int(len(a)), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
           "gain_pct": float(100.0 * (a.mean() - b.mean()) / b.mean()) if b.mean() > 0 else float("nan")}
    if not np.any(diff):  # identical rankings: no evidence either way
        return {**res, "p_wilcoxon": 1.0, "p_ttest": 1.0}
    res["p_wilcoxon"] = float(stats.wilcoxon(a, b).pvalue)
    res["p_ttest"] = float(stats.ttest_rel(a, b).pvalue) if np.std(diff) > 0 else 0.0
    return res


def gains(per_user: dict, protocols, subset: dict | None = None) -> list:
    """per_user: (loss, backbone, variant) -> {protocol: [U] NDCG@10 averaged over seeds}; subset: variant ->
    user mask to compare on (slim_teacher: the users the teacher covered). -> one dict per (pair, backbone, loss)."""
    out = []
    for (loss, bb, v), pu in sorted(per_user.items()):
        for base in baselines(v):
            if (loss, bb, base) not in per_user:
                continue
            better = v
            mask = (subset or {}).get(parse_variant(better)[0], (subset or {}).get(parse_variant(base)[0]))
            for p in protocols:
                a, b = pu[p], per_user[(loss, bb, base)][p]
                if mask is not None:
                    a, b = a[mask], b[mask]
                out.append({"backbone": bb, "loss": loss, "protocol": p, "model": better, "baseline": base,
                            **paired(a, b)})
    return out


def _cell(row: dict, p: str, m: str) -> str:
    mean, std, _ = row[p][m]
    return f"{mean:.2f} ± {std:.2f}"


def table(agg: dict, protocols, chance: dict) -> list[str]:
    """One markdown table per protocol, losses side by side, the chance level as the last row."""
    losses = sorted(agg)
    keys = sorted({k for loss in losses for k in agg[loss]}, key=_order)
    lines = []
    for p in protocols:
        ch = chance[p]
        heads = " | ".join(f"{loss} {m}" for loss in losses for m in SHOWN)
        lines += [f"### {p}", "", "| model | seeds | " + heads + " |",
                  "|---|---|" + "---|" * (len(SHOWN) * len(losses))]
        for k in keys:
            cells = [(_cell(agg[loss][k], p, m) if k in agg[loss] else "–") for loss in losses for m in SHOWN]
            seeds = max(len(agg[loss][k]["seeds"]) for loss in losses if k in agg[loss])
            lines.append(f"| {k} | {seeds} | " + " | ".join(cells) + " |")
        lines += ["| chance | | " + " | ".join(f"{ch[m]:.2f}" for _ in losses for m in SHOWN) + " |", ""]
    return lines


def _order(key: str):
    variants = ("id", "id_text", "text", "history_text", "slim_teacher", "slim")
    if key.startswith("text_match"):
        return (1, "", key, "", "")
    bb, v = key.split("-", 1)
    base, at, fusion = parse_variant(v)
    return (0, bb, str(variants.index(base)) if base in variants else base, fusion, at)


def gains_table(rows: list, title: str) -> list[str]:
    if not rows:
        return []
    lines = [f"## {title}", "", "Relative change of mean NDCG@10 over users (seed-averaged per user); two-sided "
             "p-values of the paired Wilcoxon signed-rank test and paired t-test over the same users.", "",
             "| backbone | loss | protocol | model | baseline | users | model NDCG@10 | baseline NDCG@10 | gain % "
             "| p Wilcoxon | p t-test |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in rows:
        lines.append(f"| {g['backbone']} | {g['loss']} | {g['protocol']} | {g['model']} | {g['baseline']} | {g['n']:,} "
                     f"| {g['mean_a']:.2f} | {g['mean_b']:.2f} | {g['gain_pct']:+.1f} | {g['p_wilcoxon']:.2g} "
                     f"| {g['p_ttest']:.2g} |")
    return lines + [""]


def search_table(s: dict | None) -> list[str]:
    """train.search's choice per row group, with the budget and the fairness rule (the train manifest's search)."""
    if not s:
        return []
    sp = s["space"]
    lines = ["## Hyperparameter search", "",
             f"Every row group had the same budget: the same {s['trials']} trials for every group (one list drawn "
             f"from seed {s['seed']}), the same space and the same scheduler ({s['scheduler']}"
             + (f", grace {s['grace_epochs']} epochs, reduction factor {s['reduction_factor']}"
                if s["scheduler"] == "asha" else "")
             + f", at most {s['max_epochs']} epochs), selected on validation NDCG@10 under `{s['valid_protocol']}`. "
             f"Space: lr log-uniform {sp['lr'][0]:g}-{sp['lr'][1]:g}, hidden one of {list(sp['hidden'])}, the "
             f"backbone's dropout uniform {sp['dropout'][0]:g}-{sp['dropout'][1]:g}, weight decay 0 in "
             f"{sp['weight_decay_zero']:.0%} of the draws else log-uniform {sp['weight_decay'][0]:g}-"
             f"{sp['weight_decay'][1]:g}, num_negatives (bce) one of {list(sp['num_negatives'])}. The `sum` "
             "fusion's weight is tuned on validation after training, in every seed run. Every seed run of a row "
             "trains the row's choice.", "",
             "| row group | lr | hidden | dropout | weight decay | negatives | best trial valid NDCG@10 "
             "| distinct trials | epochs trained |", "|---|---|---|---|---|---|---|---|---|"]
    for g, c in sorted(s["groups"].items()):
        hp = c["hp"]
        cell = (lambda k: f"{hp[k]:g}" if k in hp else "–")
        lines.append(f"| {g} | {cell('lr')} | {cell('hidden')} | {cell('dropout')} | {cell('weight_decay')} "
                     f"| {cell('num_negatives')} | {c['score']:.2f} | {c['distinct']} | {c['trained_epochs']} |")
    return lines + [""]
