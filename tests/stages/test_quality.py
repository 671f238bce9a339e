"""Rationale quality measures on hand-made examples (slim.text.quality)."""

import pytest

from slim.text import quality as Q
from slim.text.rationale import parse

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


def test_stage_tables_and_shards_measure_like_rows(tmp_path):
    """The teacher measures its final table, the student its shards file by file: both equal `measure`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_row(GOOD), _row(LOOP), _row(""), _row(GOOD)]
    rows[2]["ok"] = False
    table = pa.table({k: [r[k] for r in rows] for k in ("rationale", "step1", "step2", "step3")}
                     | {"status": ["ok" if r["ok"] else "malformed" for r in rows]})
    want = Q.measure(rows)
    assert Q.of_table(table) == want and want["parse_rate"] == 50.0
    pq.write_table(table.slice(0, 1), tmp_path / "a.parquet")
    pq.write_table(table.slice(1), tmp_path / "b.parquet")
    got = Q.of_shards([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k]) for k in want)


def test_grounding_maps_titles_to_their_items_and_rejects_unrelated_text():
    """With the packaged all-MiniLM-L6-v2: product names find their catalogue items; chatter finds none."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from slim.text import grounding as G
    from slim.runtime.llm_models import resolve_encoder

    st = SentenceTransformer(resolve_encoder("all-MiniLM-L6-v2"), device="cpu")
    catalogue = ["The Legend of Zelda: Breath of the Wild. Category: Action Adventure. Brand: Nintendo",
                 "Mario Kart 8 Deluxe. Category: Racing. Brand: Nintendo",
                 "FIFA 19. Category: Sports. Brand: Electronic Arts",
                 "Logitech G502 Gaming Mouse. Category: Accessories. Brand: Logitech",
                 "Call of Duty: Black Ops 4. Category: Shooter. Brand: Activision"]
    items = np.zeros((len(catalogue) + 1, 384), np.float32)
    items[1:] = st.encode(catalogue, normalize_embeddings=True)
    names = ["Mario Kart 8", "Zelda Breath of the Wild", "Black Ops 4", "FIFA 19",
             "the user enjoys spending weekends outdoors", "a recipe for banana bread"]
    m = G.nearest(st.encode(names, normalize_embeddings=True), items, threshold=0.6)  # titles ~0.75, chatter < 0.3
    assert m.item_ids.tolist() == [2, 1, 5, 3, 0, 0], m.sims
    r = G.rate([m.item_ids[:3], m.item_ids[3:]], [[2], []])
    assert r == {"products": 6, "grounded": 3, "in_history": 1, "unmatched": 2, "grounded_rate": 50.0}


def test_structured_answers_parse_into_the_three_steps():
    import json

    from slim.text.rationale import parse, render

    obj = {"preferences": "Open-world RPGs on Nintendo consoles.",
           "categories": [{"name": "RPG", "products": ["Skyrim", "The Witcher 3"]},
                          {"name": "Racing", "products": ["Mario Kart 8"]}]}
    p = parse(json.dumps(obj))
    assert p.ok and p.step1 == obj["preferences"] and p.step2 == "1. RPG\n2. Racing"
    assert Q.products(p.step3) == ["Skyrim", "The Witcher 3", "Mario Kart 8"]
    assert parse(render(p)) == p  # the rendered text parses back to the same steps
    cut = parse(json.dumps(obj)[:40])  # cut off at max_tokens
    assert not cut.ok and "JSON" in cut.problem
    assert not parse('{"preferences": "x", "categories": []}').ok


def test_sampling_and_teacher_requests_carry_schema_and_repetition_penalty():
    from slim.text.rationale import SCHEMA, parse, to_json
    from slim.student.engines import sampling_dict
    from slim.distill.examples import target_text
    from slim.student.stage import SamplingConfig
    from slim.teacher.stage import TeacherConfig, settings

    d = sampling_dict(SamplingConfig(repetition_penalty=1.3, structured=True))
    assert d["repetition_penalty"] == 1.3 and d["structured_outputs"] == {"json": SCHEMA}
    assert "structured_outputs" not in sampling_dict(SamplingConfig())  # free text stays the default
    assert settings(TeacherConfig(structured=True)).response_format["json_schema"]["schema"] == SCHEMA
    assert settings(TeacherConfig()).response_format is None
    # distillation's structured target is JSON that parses back to the teacher's steps
    free = "Step 1: likes RPGs\nStep 2: 1. RPG 2. Racing\nStep 3: RPG: Skyrim, Fable\nRacing: Forza"
    tgt = target_text(free, structured=True)
    assert tgt == to_json(parse(free)) and parse(tgt).ok and Q.products(parse(tgt).step3) == ["Skyrim", "Fable",
                                                                                             "Forza"]
