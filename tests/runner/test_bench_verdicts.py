"""The benchmarks' verdict sentences follow their figures (issue 42: bench_serve.py said "out of reach" beside a
table showing 0.93 and 0.92 against a 0.9 goal). Pure functions, fed figures on both sides of each threshold."""

import numpy as np

from bench import verdicts as V


def test_serve_bound_verdict_reads_the_figures():
    above = V.serve_bound({1: 0.93, 8: 0.92, 32: 0.95})
    assert "out of reach" not in above and "within reach" in above and "0.93" in above and "0.92" in above
    below = V.serve_bound({1: 0.62, 8: 0.71, 32: 0.55})
    assert "out of reach" in below and "within reach" not in below and "1, 8, 32 client" in below
    mixed = V.serve_bound({1: 0.95, 8: 0.89, 32: 0.91})
    assert "under 0.9 at 8 client" in mixed and "at 1, 32 it is within reach" in mixed
    assert "out of reach" not in V.serve_bound({1: 0.9})  # the goal is "at least 0.9x": 0.9 reaches it


def test_goal_and_overhead_verdicts():
    assert "**met**" in V.goal({"1 clients": 0.95, "8 clients": 0.9}, 0.9, "Goal")
    miss = V.goal({"1 clients": 0.95, "8 clients": 0.89}, 0.9, "Goal")
    assert "**not met**" in miss and "8 clients (0.89x)" in miss and "1 clients" not in miss
    assert V.overhead(0.07, 0.10, "job overhead") == "**job overhead +7.0%** (goal < 10%: met)"
    assert V.overhead(0.12, 0.10, "job overhead").endswith("not met)")
    assert "**faster**" in V.speedup(92, 15, "evaluate") and "x6.13" in V.speedup(92, 15, "evaluate")
    assert "**slower**" in V.speedup(15, 92, "evaluate")
    assert "no difference" in V.speedup(10.0, 10.2, "evaluate")


def _figures(floor_rps: float, in_process_ms: float) -> tuple[dict, dict]:
    """bench_serve's measurements: in-process seconds per call by batch size, and medians per (app, clients)."""
    from bench.bench_serve import APPS, BATCHES, LEVELS

    base = {b: np.full(5, b * in_process_ms / 1e3) for b in BATCHES}
    med = {(m, c): {"rps": floor_rps * (0.9 if m == "on" else 1.0), "per_pass": 1.0, "cpu_ms": 2.0, "p50_ms": 5.0,
                    "p99_ms": 9.0, "n": 100, "errors": 0} for m in APPS for c in LEVELS}
    return base, med


def test_bench_serve_tables_compute_their_verdicts():
    from bench.bench_serve import _bound_table

    # floor 100 req/s = 10 ms per request; +0.75 ms of model -> bound 93.0 req/s = 0.93 of the floor
    text = "\n".join(_bound_table(*_figures(100.0, 0.75)))
    assert "| 0.93 |" in text and "out of reach" not in text and "within reach" in text
    # +5 ms of model -> bound 66.7 req/s = 0.67 of the floor: out of reach
    text = "\n".join(_bound_table(*_figures(100.0, 5.0)))
    assert "| 0.67 |" in text and "out of reach" in text


def test_refresh_cost_verdict_on_both_sides_of_the_ceiling():
    assert V.within(0.25, 0.30, "1.5 x 20.0% = 30.0%").startswith("**met** (25.0%")
    assert V.within(0.31, 0.30, "1.5 x 20.0% = 30.0%").startswith("**not met** (31.0%")
