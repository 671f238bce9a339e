"""The benchmarks' verdict sentences, computed from the figures they summarise (pure functions, tested in
tests/runner/test_bench_verdicts.py): a results file never says "out of reach" beside a table that shows the goal met."""

from __future__ import annotations


def goal(ratios: dict, target: float, what: str) -> str:
    """Whether every ratio (label -> ratio) reaches `target`: 'met' or 'not met', with the ratios that miss it."""
    short = {k: v for k, v in ratios.items() if v < target}
    if not short:
        return f"{what}: **met** (every figure at or above {target:g}x)"
    return f"{what}: **not met** (under {target:g}x at " + ", ".join(f"{k} ({v:.2f}x)" for k, v in short.items()) + ")"


def serve_bound(bound_over_floor: dict, target: float = 0.9) -> str:
    """bench_serve.py: what the bound (the floor's time per request plus the model's in-process time) says about the
    goal of `target` x the floor's requests/s, per client level (label -> bound / floor)."""
    out = [k for k, v in bound_over_floor.items() if v < target]
    within = [k for k in bound_over_floor if k not in out]
    figures = ", ".join(f"{k}: {v:.2f}" for k, v in bound_over_floor.items())
    if not out:
        return (f"bound / floor (at the batch the replica got) is at or above {target:g} at every client level "
                f"({figures}): the model's compute leaves the {target:g}x goal within reach; any shortfall of on / "
                "floor is the serving code's or the machine's.")
    levels = ", ".join(str(k) for k in out)
    rest = (f"; at {', '.join(str(k) for k in within)} it is within reach, so a shortfall there is the serving "
            "code's or the machine's") if within else ""
    return (f"bound / floor (at the batch the replica got) is under {target:g} at {levels} client(s) ({figures}): "
            f"there the {target:g}x goal is out of reach for this model on this machine whatever the serving code "
            f"does{rest}.")


def overhead(ratio_minus_one: float, limit: float, what: str) -> str:
    """A relative overhead (e.g. +0.07 for 7%) against its limit: the figure, the goal and 'met' / 'not met'."""
    word = "met" if ratio_minus_one < limit else "not met"
    return f"**{what} {ratio_minus_one:+.1%}** (goal < {limit:.0%}: {word})"


def speedup(before_s: float, after_s: float, what: str) -> str:
    """before / after as a ratio, and which is faster, in words that follow the figures."""
    r = before_s / after_s if after_s > 0 else float("inf")
    if abs(r - 1) < 0.05:
        return f"{what}: {after_s:.1f} s vs {before_s:.1f} s, x{r:.2f}: no difference beyond 5%"
    word = "faster" if r > 1 else "slower"
    return f"{what}: {after_s:.1f} s vs {before_s:.1f} s, x{r:.2f}: **{word}**"


def within(value: float, limit: float, limit_text: str) -> str:
    """A cost ratio against its ceiling (e.g. refresh / scratch against 1.5x the changed fraction): met or not."""
    word = "met" if value <= limit else "not met"
    return f"**{word}** ({value:.1%} vs {limit_text})"
