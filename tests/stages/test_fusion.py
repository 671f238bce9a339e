"""Item-text fusion alternatives (slim.models.fusion): init, sum, align against the paper's concat."""

import json

import numpy as np
import pytest
import torch

from slim.models import Recommender
from slim.models.fusion import SUM_WEIGHTS, text_init
from slim.recsys import data as D
from tests.stages.test_recsys import _write_run


def _clustered_text(n=60, d=16, k=3, seed=0):
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(k, d))
    t = np.zeros((n + 1, d), np.float32)
    t[1:] = cent[np.arange(n) % k] + 0.1 * rng.normal(size=(n, d))
    return t, np.arange(n) % k


def test_init_gives_the_id_table_the_texts_geometry():
    text, cl = _clustered_text()
    m = Recommender("gru4rec", 60, 8, variant="id_text", item_text=text, text_fusion="init", max_len=50)
    e = torch.nn.functional.normalize(m.items.id_emb.weight[1:].detach(), dim=-1)
    sim = (e @ e.T).numpy()
    same, other = sim[cl[:, None] == cl[None]].mean(), sim[cl[:, None] != cl[None]].mean()
    assert same > 0.8 and other < 0.2  # text neighbours start as ID neighbours
    assert m.items.text is None and m.items.fusion is None  # then it is an ID model: nothing of the text at scoring
    assert m.items.id_emb.weight[1:].std().item() == pytest.approx(0.02, rel=0.05)  # the ID init's scale
    plain = Recommender("gru4rec", 60, 8, variant="id", max_len=50)
    pe = torch.nn.functional.normalize(plain.items.id_emb.weight[1:].detach(), dim=-1)
    psim = (pe @ pe.T).numpy()
    assert psim[cl[:, None] == cl[None]].mean() < 0.3  # a random table has no such structure
    assert text_init(text, 8)[0].abs().sum() == 0  # padding row


def test_align_pulls_id_vectors_to_their_text():
    text, _ = _clustered_text(n=40)
    torch.manual_seed(0)
    m = Recommender("gru4rec", 40, 8, variant="id_text", item_text=text, text_fusion="align", align_weight=1.0,
                    max_len=50)
    plain = Recommender("gru4rec", 40, 8, variant="id_text", item_text=text, max_len=50)
    assert plain.aux_loss(torch.arange(1, 41)) is None
    items = torch.arange(1, 41)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = float(m.aux_loss(items).detach())
    for _ in range(200):
        loss = m.aux_loss(items)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(m.aux_loss(items).detach()) < 0.3 * first
    e, t = m.items.id_emb(items), m.items.fusion.project(m.items.text[items])
    hit = (torch.nn.functional.normalize(e, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T).argmax(1)
    assert (hit == torch.arange(40)).float().mean() > 0.9  # each ID vector now finds its own item's text


def test_sum_tunes_its_weight_on_validation_and_reloads(tmp_path):
    from slim.recsys.checkpoint import load_model, save_run
    from slim.recsys.ranking import evaluate
    from slim.recsys.spec import RunSpec
    from slim.train.loop import fit

    _write_run(tmp_path)
    d = D.load(tmp_path)
    text = np.random.default_rng(0).normal(size=(d.num_items + 1, 16)).astype(np.float32)
    text[0] = 0
    spec = RunSpec("gru4rec", "id_text", 0, hidden=16, max_len=10, epochs=3, batch_size=32, lr=5e-3,
                   text_fusion="sum")
    assert spec.name == "gru4rec-id_text+sum-bce-s0"
    model, rec = fit(spec, d, text, "uni100", ("uni100",))
    assert rec["sum_weight"] in SUM_WEIGHTS and rec["text_fusion"] == "sum"
    got = {}
    for w in SUM_WEIGHTS:
        model.w.fill_(w)
        got[w] = evaluate(model, d, "valid", ("uni100",), 10)["uni100"]["NDCG@10"]
    assert got[rec["sum_weight"]] == max(got.values())  # the weight is the validation argmax
    model.w.fill_(rec["sum_weight"])
    save_run(tmp_path / "models" / spec.name, model, spec, d.num_items, rec, "fp")
    again, _ = load_model(tmp_path / "models" / spec.name)
    assert float(again.w) == rec["sum_weight"]
    assert evaluate(again, d, "test", ("uni100",), 10) == rec["test"]
    assert json.loads(json.dumps(rec))["sum_weight"] == rec["sum_weight"]  # the record is JSON-able
