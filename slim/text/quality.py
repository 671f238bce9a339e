"""Rationale quality: what the encoder receives is what SLIM can learn from, so every stage that writes or reads
rationales reports these measures (teacher, student, encode summaries and manifests).

- parse rate: share of rows whose answer has all three steps, in order, non-empty (slim.text.rationale.parse)
- empty steps: share of rows whose step k is empty, per step
- repetition: distinct-2 (distinct word bigrams / bigrams, low when a model loops: "Action, Action, Action")
  and the share of rows whose most frequent 3-gram covers over a third of their 3-grams ("looping")
- products: the product names listed in step 3 (numbered or bulleted lines, "Category: a, b, c" lists)
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[\w']+")
_ENUM = re.compile(r"^\s*(?:[-*•]+|\(?\d+[.)]|\(?[a-zA-Z][.)])\s+")


def ngrams(text: str, n: int) -> list[tuple]:
    w = _WORD.findall((text or "").lower())
    return [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]


def distinct(text: str, n: int = 2) -> float:
    """Distinct n-grams / n-grams of one text (1.0 when too short to repeat)."""
    g = ngrams(text, n)
    return len(set(g)) / len(g) if g else 1.0


def looping(text: str, n: int = 3, share: float = 1 / 3) -> bool:
    """The most frequent n-gram makes up more than `share` of the text's n-grams (and occurs 3+ times)."""
    g = ngrams(text, n)
    if len(g) < 3:
        return False
    top = Counter(g).most_common(1)[0][1]
    return top >= 3 and top / len(g) > share


def products(step3: str) -> list[str]:
    """Product names listed in step 3: one per enumerated line, or the comma/semicolon list after a heading
    ("Nintendo: Mario Kart 8, Zelda"). Duplicates dropped, order kept."""
    out = []
    for line in (step3 or "").splitlines():
        line = _ENUM.sub("", line).strip().strip("*_").strip()
        if not line:
            continue
        head, sep, rest = line.partition(":")
        parts = re.split(r"[,;]", rest) if sep and rest.strip() else [line if not sep else head]
        for p in parts:
            p = _ENUM.sub("", p.rpartition(":")[2]).strip().strip(".*_\"' ").strip()  # "Racing: Forza" -> Forza
            if len(p) >= 2 and p.lower() not in (x.lower() for x in out):
                out.append(p)
    return out


def measure(rows: list[dict]) -> dict:
    """rows: dicts with rationale, step1..3 and ok (parsed with all steps) -> the measures over them (percent and
    means). An empty list gives zeros and n=0."""
    n = len(rows)
    if not n:
        return {"n": 0}
    texts = [r.get("rationale") or "" for r in rows]
    out = {"n": n, "parse_rate": 100.0 * sum(bool(r.get("ok")) for r in rows) / n,
           "distinct2": sum(distinct(t) for t in texts) / n, "looping_rate": 100.0 * sum(map(looping, texts)) / n,
           "products_per_row": sum(len(products(r.get("step3") or "")) for r in rows) / n}
    for k in ("step1", "step2", "step3"):
        out[f"{k}_empty"] = 100.0 * sum(not (r.get(k) or "").strip() for r in rows) / n
    return out


class Tally:
    """Running sums of `measure` over batches, for a stage that streams rationales (the encode stage)."""

    KEYS = ("parse_rate", "distinct2", "looping_rate", "products_per_row", "step1_empty", "step2_empty",
            "step3_empty")

    def __init__(self):
        self.n, self.sums = 0, dict.fromkeys(self.KEYS, 0.0)

    def add(self, rows: list[dict]) -> None:
        m = measure(rows)
        for k in self.KEYS:
            self.sums[k] += m.get(k, 0.0) * m["n"]
        self.n += m["n"]

    def result(self) -> dict:
        return {"n": self.n, **{k: v / self.n for k, v in self.sums.items()}} if self.n else {"n": 0}


_COLUMNS = ("rationale", "step1", "step2", "step3", "status")


def _rows(t) -> list[dict]:
    cols = {k: t.column(k).to_pylist() for k in _COLUMNS}
    return [{**{k: v[i] for k, v in cols.items()}, "ok": cols["status"][i] == "ok"} for i in range(t.num_rows)]


def of_table(t) -> dict:
    """`measure` over a rationale table (teacher or student schema; a row is ok when its status is)."""
    return measure(_rows(t))


def of_shards(files) -> dict:
    """`measure` over rationale shards read one file at a time (each user once: call after compaction); local
    files or objects in a bucket."""
    from slim.io import storage

    tally = Tally()
    for f in files:
        tally.add(_rows(storage.read_table(f, columns=list(_COLUMNS))))
    return tally.result()


def describe(q: dict) -> str:
    """One line of slim.text.quality measures (and the grounded rate when grounding ran)."""
    if not q.get("n"):
        return "no rows"
    line = (f"parse rate {q['parse_rate']:.1f}%, empty steps {q['step1_empty']:.0f}/{q['step2_empty']:.0f}/"
            f"{q['step3_empty']:.0f}%, distinct-2 {q['distinct2']:.2f}, looping {q['looping_rate']:.1f}%, "
            f"{q['products_per_row']:.1f} products/row")
    if "grounded_rate" in q:
        line += (f", grounded {q['grounded_rate']:.1f}% of {q['products']:,} (in history {q['in_history']:,}, "
                 f"unmatched {q['unmatched']:,})")
    return line
