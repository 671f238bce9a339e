"""reports/results.md from the evaluate stage's results (slim.evaluate.stage)."""

from __future__ import annotations

from slim.recsys import report
from slim.io.rundir import peak_rss_mb


def scale_line(stage: str, rows: int, what: str, seconds: float) -> str:
    return (f"[{stage}] {rows:,} {what} in {seconds:.1f}s, {rows / max(seconds, 1e-9):,.0f} per second; "
            f"driver peak RSS {peak_rss_mb():,.0f} MB")

PROTOCOL_NOTES = {
    "full": "full ranking over all items, the user's history excluded (ours; the headline)",
    "full_keep": "full ranking over all items, history kept (RecBole's default for sequential models)",
    "uni100": "target + 100 uniformly sampled negatives (the paper's protocol)",
    "pop100": "target + 100 popularity-sampled negatives",
}


def markdown(res: dict, protocols) -> str:
    order = sorted(protocols, key=lambda p: (p != "full", p != "full_keep", p))
    lines = [f"# SLIM and its baselines, {res['split']} split ({res['users']:,} users, {res['items']:,} items)", "",
             "Mean ± std over seeds, in percent; losses side by side (bce: sampled negatives, the paper's; ce: full "
             "softmax). Chance is computed from the candidates each user actually ranks.", ""]
    lines += [f"- `{p}`: {PROTOCOL_NOTES.get(p, p)}" for p in order] + [""]
    if res.get("valid_protocol"):
        lines += [f"Models selected (early stopping, the `sum` fusion's weight) on validation NDCG@10 under "
                  f"`{res['valid_protocol']}`. User text is fused in training "
                  + " and ".join({"after_prefix": "after the prompt's prefix only (rows without a mark)",
                                  "all": "at every position (rows marked `@all`, the paper's way)"}[m]
                                 for m in res.get("rationale_positions", ["after_prefix"]))
                  + "; `history_text` fuses the encoded titles of the prompt's prefix (no LLM: the control).", ""]
    sm = res.get("student_model")
    if sm:
        lines += [f"Rationales (`slim`, `text_match`) written by the student `{sm.get('path')}` ({sm.get('kind')}"
                  + ("; cross-domain: distilled in another run directory" if sm.get("cross_domain") else "") + ").", ""]
    lines += ["## All users", ""] + report.table(res["rows"], order, res["chance"])
    lines += report.gains_table(res["gains"], "Gains with paired tests over users")
    lines += report.search_table(res.get("search"))
    if res.get("teacher_rows"):
        lines += [f"## Users the teacher covered ({res['teacher_users']:,})", "",
                  "`slim_teacher` fuses the teacher's own rationales (no distillation); it is trained on all users "
                  "with the learned missing vector for the others, so it is compared here, on the covered users "
                  "only, with `slim` and `id_text` ranked for the same users.", ""]
        lines += report.table(res["teacher_rows"], order, res["chance"])
        lines += report.gains_table(res["teacher_gains"], "Gains on the teacher's users")
    if res.get("users_without_rationale"):
        lines += ["Users without a usable rationale (failed or empty row, or nothing before the held-out items), "
                  "given the learned missing vector: "
                  + ", ".join(f"{k}: {v:,}" for k, v in res["users_without_rationale"].items()), ""]
    if res.get("popular_share"):
        losses = sorted(res["popular_share"])
        keys = sorted({k for v in res["popular_share"].values() for k in v}, key=report._order)
        lines += ["## Popularity bias", "", "Share (%) of the full-ranking top-10 (history excluded) that falls in the "
                  "most popular fifth of the items, mean over seeds; the long-tail plot has every group.", "",
                  "| model | " + " | ".join(losses) + " |", "|---|" + "---|" * len(losses)]
        lines += [f"| {k} | " + " | ".join(f"{res['popular_share'][l][k]:.1f}" if k in res["popular_share"][l]
                                          else "–" for l in losses) + " |" for k in keys] + [""]
    if res.get("plots"):
        lines += ["## Plots", ""] + [f"- [{f}](plots/{f})" for f in res["plots"]] + [""]
    return "\n".join(lines)



def headline(res: dict, report_path: str) -> list[str]:
    """The one screen the pipeline ends with: full-ranking NDCG@10 per backbone x variant (mean over seeds, the
    better loss named), chance, SLIM's gains over id_text and history_text with their paired p, the report's path."""
    protos = {q for rows in res["rows"].values() for row in rows.values() for q in row if q != "seeds"}
    p = "full" if "full" in protos else sorted(protos)[0]
    best: dict[tuple[str, str], tuple[float, str]] = {}  # (backbone or "text_match", variant or field) -> (mean, loss)
    for loss, rows in res["rows"].items():
        for key, row in rows.items():
            bb, v = ("text_match", key[len("text_match "):].strip("()")) if key.startswith("text_match") \
                else key.split("-", 1)
            if (bb, v) not in best or row[p]["NDCG@10"][0] > best[(bb, v)][0]:
                best[(bb, v)] = (row[p]["NDCG@10"][0], loss)
    bbs = sorted({b for b, _ in best} - {"text_match"})
    variants = sorted({v for b, v in best if b != "text_match"}, key=lambda v: report._order(f"x-{v}"))
    width = max([len(v) for v in variants] + [14])
    lines = [f"headline: {p} NDCG@10 (%), mean over seeds, the better of the losses; chance "
             f"{res['chance'][p]['NDCG@10']:.2f}; {res['users']:,} users, {res['items']:,} items",
             f"{'':{width}s} " + " ".join(f"{b:>13s}" for b in bbs)]
    for v in variants:
        lines.append(f"{v:{width}s} " + " ".join(f"{best[(b, v)][0]:7.2f} {best[(b, v)][1]:>5s}"
                                                 if (b, v) in best else f"{'-':>13s}" for b in bbs))
    tm = [f"{v} {m:.2f} {loss}" for (b, v), (m, loss) in sorted(best.items()) if b == "text_match"]
    if tm:
        lines.append("text_match (no IDs): " + ", ".join(tm))
    vs: dict[tuple, list[str]] = {}
    for g in res.get("gains", []):
        if g["protocol"] == p and report.parse_variant(g["model"])[0] == "slim" \
                and report.parse_variant(g["baseline"])[0] in ("id_text", "history_text"):
            vs.setdefault((g["backbone"], g["loss"], g["model"]), []).append(
                f"vs {g['baseline']} {g['gain_pct']:+.1f}% (p {g['p_wilcoxon']:.2g})")
    lines += [f"{bb} {loss} {model}: " + ", ".join(parts) for (bb, loss, model), parts in sorted(vs.items())]
    return lines + [f"full report (every protocol and metric, all gains, plots): {report_path}"]
