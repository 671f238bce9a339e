"""bench/bench_tuned.py's verdict: each preset question (row a against row b) asked of the untuned and the tuned
table gets "same answer" only when the difference keeps its sign and its side of p = 0.05 (synthetic per-user
NDCG@10, no run directory)."""

import numpy as np

from bench import bench_tuned, steps

USERS = [f"u{i}" for i in range(200)]


def _rows(gain: float, seed: int) -> dict:
    """(loss, backbone, variant) -> {user: NDCG@10}: id_text+sum is id_text plus `gain` per user, with noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 10, len(USERS))
    plus = base + gain + rng.normal(0, 0.5, len(USERS))
    return {("ce", "sasrec", "id_text"): dict(zip(USERS, base)), ("ce", "sasrec", "id_text+sum"): dict(zip(USERS, plus))}


def _verdict(untuned: float, tuned: float) -> str:
    preset = {"questions": [("id_text+sum", "id_text", "sum beats concat?")]}
    lines = bench_tuned.questions(preset, {"untuned": _rows(untuned, 0), "tuned": _rows(tuned, 1)})
    row = [line for line in lines if line.startswith("| sum beats concat?")]
    assert len(row) == 1, lines
    return row[0].rstrip(" |").rsplit("| ", 1)[1]


def test_a_flipped_or_vanished_difference_is_a_changed_answer():
    assert _verdict(1.0, 1.0) == "yes"  # a clear gain in both tables
    assert _verdict(1.0, -1.0) == "**no**"  # tuning reverses it
    assert _verdict(1.0, 0.0) == "**no**"  # tuning erases it (p above 0.05)


def test_compare_pairs_users_by_key():
    a = {("ce", "sasrec", "id"): {"x": 2.0, "y": 4.0, "z": 9.0}}
    b = {("ce", "sasrec", "id"): {"y": 1.0, "x": 1.0}}  # another order, one user fewer
    (g,) = steps.compare(a, b)
    assert g["users"] == 2 and g["a"] == 3.0 and g["b"] == 1.0 and g["row"] == "sasrec-id (ce)"
