"""Encode job at scale: a 50,000-user slice (200,000 rationale texts + 20,000 items), with the job's memory (PSS,
and summed RSS) sampled against users encoded, so "memory is bounded by the batch and the number of actors" is a
measured curve.

  PYTHONPATH=. .venv/bin/python bench/bench_encode_scale.py --users 50000 --out bench/results/encode_scale.md

The encoder is a 2-layer, 64-wide BERT with all-MiniLM-L6-v2's tokenizer, random weights, mean pooling and
normalisation, saved as a sentence-transformers model: the real MiniLM encodes 22-32 texts/s in this job here
(bench_encode.py), i.e. 2-3 hours for this slice, while everything else (reading the shards, the real tokenizer and
the step-3-preserving truncation, the actor pool, the memmap and Parquet writers) is the same. The projected time
for 1,000,000 users with MiniLM comes from bench_encode.py's rate.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench.bench_encode import write_rationales  # noqa: E402
from bench.memwatch import PeakMem, peaks_by_fifth, plot_mem  # noqa: E402
from slim.io import columns as C  # noqa: E402


def make_tiny_encoder(out: Path) -> Path:
    """Random 2-layer BERT with MiniLM's tokenizer (max 256 word pieces), mean-pooled and L2-normalised."""
    if (out / "modules.json").exists():
        return out
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from slim.runtime.llm_models import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    bert_dir = out.with_name(out.name + ".bert")
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=512)).save_pretrained(bert_dir)
    tok.save_pretrained(bert_dir)
    word = models.Transformer(str(bert_dir), max_seq_length=256)
    st = SentenceTransformer(modules=[word, models.Pooling(64, "mean"), models.Normalize()], device="cpu")
    tmp = out.with_name(out.name + ".tmp")
    st.save(str(tmp))
    tmp.rename(out)
    return out


class UsersDone(logging.Handler):
    """Progress from the encode stage's own progress line ("encode (student): 1,920/50,000 users, ..."), logged to
    slim.progress as often as SLIM_PROGRESS_EVERY_S allows (set to every half second below)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.n = 0

    def emit(self, record):
        m = re.match(r"encode \(\w+\): ([\d,]+)/[\d,]+ users", record.getMessage())
        if m:
            self.n = int(m.group(1).replace(",", ""))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--object-store-mib", type=int, default=None, help="encode.object_store_mib (default: the config's)")
    p.add_argument("--root", default="/tmp/slim-bench-encode-scale")
    p.add_argument("--real", default="bench/results/encode.md", help="bench_encode.py's results (projection)")
    p.add_argument("--out", default="bench/results/encode_scale.md")
    a = p.parse_args()
    from slim.encode.stage import EncodeConfig, run
    from slim.testing.rundata import write_run_data

    machine = harness.Machine()
    d = Path(a.root)
    if not list((d / C.STUDENT_SHARDS).glob("part-*.parquet")):
        write_run_data(d, num_users=a.users, num_items=a.items, mean_len=10)
        write_rationales(d, a.users)
    model = make_tiny_encoder(d / "tiny-encoder")
    done = UsersDone()
    harness.env_defaults({"SLIM_PROGRESS_EVERY_S": "0.5"})  # a point of the memory curve every half second
    log = logging.getLogger("slim.progress")
    log.setLevel(logging.INFO)
    log.addHandler(done)
    ray = harness.ray(6)
    budget = {} if a.object_store_mib is None else {"object_store_mib": a.object_store_mib}
    cfg = EncodeConfig(run_dir=str(d), model=str(model), batch_size=a.batch_size, num_actors=1, actor_cpus=0.5,
                       **budget)
    with PeakMem(interval=0.5, progress=lambda: done.n) as mem:
        m = run(cfg, force=True)
    ray.shutdown()
    assert m.counts["users"] == a.users, m.counts
    report(a, cfg, m, mem, machine)


def real_rate(md: Path) -> float | None:
    """Texts/s of the real MiniLM job at bench_encode.py's largest slice (its table's last row)."""
    rows = re.findall(r"^\| [\d,]+ \| [\d,]+ \| [\d.]+ \| ([\d.]+) \|", md.read_text(), re.M) if md.exists() else []
    return float(rows[-1]) if rows else None


def report(a, cfg, m, mem: PeakMem, machine: harness.Machine) -> None:
    n, t = a.users, m.timings
    users = [x for x in mem.samples if x[2] > 0]  # from the first users batch on (the items pass comes before)
    fifths = peaks_by_fifth(users, n)
    (t0, _, u0), (t1, _, u1) = users[0], users[-1]
    streaming = (u1 - u0) / max(t1 - t0, 1e-9)  # users/s once the actor is up and batches flow
    png = plot_mem(mem, Path(a.out).with_suffix(".png"), n, "users encoded (x 4 fields)",
                   "encode job: memory against users")
    lo, hi = (1, n / 5), (4 * n / 5, n + 1)
    texts = 4 * n + a.items
    rate = real_rate(Path(a.real))
    cmd = harness.command(f"--users {n} --items {a.items} --batch-size {a.batch_size}" + (
        "" if a.object_store_mib is None else f" --object-store-mib {a.object_store_mib}"))
    lines = [
        f"Input: {n:,} generated rationales (whole + 3 steps, ~180 word pieces each) and {a.items:,} items. Encoder: a "
        "random 2-layer BERT with all-MiniLM-L6-v2's tokenizer (see the module docstring for why); one actor, "
        f"0.5 logical CPU; object-store budget {cfg.object_store_mib} MiB (0: Ray Data's default). "
        "Memory of the driver and every Ray process, sampled every 0.5 s: PSS summed (shared pages counted once) and "
        "RSS summed (shared pages counted in every process that maps them; bench/memwatch.py).", "",
        f"- {texts:,} texts in {t['total_s']:.0f} s (items {t['items_s']:.0f} s, users {t['users_s']:.0f} s). Once "
        f"batches flow: {streaming:.0f} users/s ({4 * streaming:.0f} texts/s), the job's ceiling here with a near-free "
        "encoder.",
        "- Truncated: " + ", ".join(f"{f} {m.counts[f + '_truncated']:,}" for f in C.USER_EMB_FIELDS) + ".",
        f"- Peak over the whole run: PSS {mem.peak_mb:,.0f} MB, RSS summed {mem.peak_rss_mb:,.0f} MB (before the job: "
        f"{mem.base / 2**20:,.0f} and {mem.base_rss / 2**20:,.0f} MB).",
        "- Peak PSS while each fifth of the users was being encoded (MB; the items pass before it is in the whole-run "
        "peak only): " + ", ".join(f"{x:,.0f}" for x in fifths)
        + f". Last fifth / first fifth: {fifths[-1] / fifths[0]:.2f}.",
        f"- Plot: `{png.name}` (PSS and summed RSS against users encoded).",
        "- Mean PSS by process, first fifth -> last fifth (MB; the largest changes): " + "; ".join(
            f"{k} {x:,.0f} -> {y:,.0f}" for k, x, y in mem.change_by_title(lo, hi)) + ".",
        "- Mean anonymous memory (the process's own heap) by process, same fifths (MB): " + "; ".join(
            f"{k} {x:,.0f} -> {y:,.0f}" for k, x, y in mem.change_by_title(lo, hi, anon=True)) + ".",
    ]
    if rate:
        lines.append(f"- Projection for 1,000,000 users with all-MiniLM-L6-v2 at bench_encode.py's job rate "
                     f"({rate:.1f} texts/s, one actor): {4_000_000 / rate / 3600:,.0f} h here; the job's own ceiling "
                     f"above is {1_000_000 / streaming / 3600:.1f} h.")
    harness.write_results(a.out, "Encode job at scale: memory over a 50,000-user slice", lines, cmd, machine)


if __name__ == "__main__":
    main()
