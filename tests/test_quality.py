"""Rationale quality measures on hand-made examples (slim.quality)."""

import pytest

from slim import quality as Q
from slim.rationale import parse

GOOD = ("Step 1: The user likes open-world RPGs and racing games from Nintendo.\n"
        "Step 2: 1. RPG 2. Racing 3. Nintendo 4. Strategy 5. Sony\n"
        "Step 3:\n1. RPG: The Witcher 3, Skyrim, Elden Ring\n2. Racing: Mario Kart 8; Gran Turismo 7\n"
        "- Zelda: Breath of the Wild\n")
LOOP = "Step 1: " + "Action, " * 40 + "\nStep 2:\nStep 3:"


def _row(text):
    p = parse(text)
    return {"rationale": text, "step1": p.step1, "step2": p.step2, "step3": p.step3, "ok": p.ok}


def test_products_from_lists_headings_and_bullets():
    assert Q.products(parse(GOOD).step3) == ["The Witcher 3", "Skyrim", "Elden Ring", "Mario Kart 8",
                                             "Gran Turismo 7", "Breath of the Wild"]
    assert Q.products("") == [] and Q.products("1. Halo\n2. halo\n3) Doom") == ["Halo", "Doom"]


def test_repetition_flags_a_looping_answer_only():
    assert Q.looping(LOOP) and Q.distinct(LOOP) < 0.2
    assert not Q.looping(GOOD) and Q.distinct(GOOD) > 0.9
    assert Q.distinct("a b") == 1.0 and not Q.looping("")


def test_measure_over_rows():
    m = Q.measure([_row(GOOD), _row(LOOP), _row("")])
    assert m["n"] == 3 and m["parse_rate"] == pytest.approx(100 / 3)
    assert m["looping_rate"] == pytest.approx(100 / 3)
    assert m["step2_empty"] == pytest.approx(200 / 3) and m["step3_empty"] == pytest.approx(200 / 3)
    assert m["products_per_row"] == pytest.approx(6 / 3)
    assert Q.measure([]) == {"n": 0}
