"""PNG plots of the evaluate stage (reports/plots/): NDCG@10 per protocol, the paper's long-tail and sparse-user
analyses, and text matching per rationale step. Inputs are per-user ranks, so every figure is computed from the
same rankings as the tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BUCKETS = 5  # item popularity groups and history-length groups (quintiles)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def popularity_buckets(popularity: np.ndarray) -> np.ndarray:
    """[N+1] training interactions per item id (row 0 = padding) -> [N+1] group 0 (most popular fifth of the
    items) .. 4 (least popular), by item count; ties keep id order."""
    order = np.argsort(-popularity[1:], kind="stable")
    b = np.zeros(len(popularity), dtype=np.int64)
    b[1 + order] = np.minimum(np.arange(len(order)) * BUCKETS // max(len(order), 1), BUCKETS - 1)
    return b


def length_groups(lengths: np.ndarray) -> np.ndarray:
    """[U] history lengths -> [U] quintile 0 (shortest) .. 4, by user count."""
    order = np.argsort(lengths, kind="stable")
    g = np.empty(len(lengths), dtype=np.int64)
    g[order] = np.minimum(np.arange(len(order)) * BUCKETS // max(len(order), 1), BUCKETS - 1)
    return g


def long_tail(top10: np.ndarray, ranks: np.ndarray, targets: np.ndarray, bucket: np.ndarray) -> dict:
    """top10: [S, U, 10] full-ranking recommendations, ranks: [S, U] of the targets -> share of recommendations
    and Hit@10 (percent) per popularity group, averaged over seeds."""
    share = np.stack([np.bincount(bucket[t.reshape(-1)], minlength=BUCKETS) / t.size for t in top10]).mean(0)
    tb = bucket[targets]
    hit = [float(100 * (ranks[:, tb == g] < 10).mean()) if (tb == g).any() else float("nan") for g in range(BUCKETS)]
    return {"rec_share": (100 * share).tolist(), "hit10": hit, "targets": np.bincount(tb, minlength=BUCKETS).tolist()}


def by_group(ndcg: np.ndarray, groups: np.ndarray) -> list:
    """[U] per-user NDCG@10, [U] group -> mean per group."""
    return [float(ndcg[groups == g].mean()) if (groups == g).any() else float("nan") for g in range(BUCKETS)]


def bars(ax, labels: list, series: dict, ylabel: str) -> None:
    """Grouped bars: series name -> values per label."""
    w = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + i * w - 0.4 + w / 2, vals, w, label=name)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)


def per_backbone(path: Path, panels: dict, labels: list, title: str) -> None:
    """panels: backbone -> [(ylabel, {variant: values})] -> one row of subplots per backbone."""
    plt = _plt()
    ncol = max(len(v) for v in panels.values())
    fig, axes = plt.subplots(len(panels), ncol, figsize=(5 * ncol, 3 * len(panels)), squeeze=False)
    for r, (bb, plist) in enumerate(panels.items()):
        for c, (ylabel, series) in enumerate(plist):
            bars(axes[r][c], labels, series, ylabel)
            axes[r][c].set_title(bb, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig, path) -> None:
    """A whole PNG or none, on a local disk or object storage."""
    from slim.io import atomic

    with atomic.writing(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


def grouped(rows: dict) -> tuple[list, list, dict]:
    """Report rows ('sasrec-slim@all', 'text_match (step1)') -> (groups: backbones, then text_match; variants in
    first-seen order; (group, variant) -> row)."""
    groups, variants, cells = [], [], {}
    for k, v in rows.items():
        g, var = ("text_match", k[len("text_match "):].strip("()")) if k.startswith("text_match") else k.split("-", 1)
        groups += [g] if g not in groups else []
        variants += [var] if var not in variants else []
        cells[(g, var)] = v
    return groups, variants, cells


def protocol_bars(path: Path, rows: dict, protocol: str, chance: float) -> None:
    """rows: label -> (mean, std) NDCG@10 of one protocol. Bars grouped by backbone (text_match last), one colour
    per variant in every group, the chance level as a dashed line."""
    plt = _plt()
    groups, variants, cells = grouped(rows)
    colours = plt.get_cmap("tab20" if len(variants) > 10 else "tab10")
    w = 0.8 / max(1, max(sum((g, v) in cells for v in variants) for g in groups))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(groups) + 0.25 * len(cells)), 4))
    for gi, g in enumerate(groups):
        present = [v for v in variants if (g, v) in cells]  # side by side, no gaps for variants a group lacks
        for j, v in enumerate(present):
            mean, std = cells[(g, v)]
            ax.bar(gi - 0.4 + (j + 0.5) * w, mean, w, yerr=std, capsize=2, color=colours(variants.index(v)),
                   label=v if gi == next(i for i, h in enumerate(groups) if (h, v) in cells) else None)
    ax.axhline(chance, color="k", ls="--", lw=1, label=f"chance ({chance:.2f})")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(f"NDCG@10 ({protocol}, %)")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
