"""Backbones: shapes, SASRec causality, padding invariance, overfitting a tiny batch."""

import dataclasses

import numpy as np
import pytest
import torch

from slim.models import REGISTRY, Recommender, build
from slim.recsys.spec import RunSpec
from slim.train.loop import batch_loss

N, H = 40, 16
BACKBONES = list(REGISTRY)


def _model(bb, variant="id", seed=0, **kw):
    torch.manual_seed(seed)
    text = np.random.default_rng(0).normal(size=(N + 1, 12)).astype(np.float32) if variant != "id" else None
    return build(bb, N, H, variant=variant, item_text=text, max_len=10, **kw).eval()


@pytest.mark.parametrize("bb", BACKBONES)
@pytest.mark.parametrize("variant", ["id", "id_text", "text"])
def test_shapes(bb, variant):
    m = _model(bb, variant)
    x = torch.tensor([[3, 4, 5, 4, 0, 0], [7, 8, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    lens = torch.tensor([4, 2, 6])
    s = m.encode(x, lens)
    assert s.shape == (3, H)
    assert m.score_all(s).shape == (3, N + 1)
    assert m.score(s, torch.randint(1, N + 1, (3, 101))).shape == (3, 101)
    assert torch.isfinite(s).all()
    if m.per_position:
        assert m.states(x, lens).shape == (3, 6, H)


def test_item_repr_padding_is_zero():
    for v in ("id", "id_text"):
        m = _model("sasrec", v)
        assert torch.count_nonzero(m.items(torch.tensor([0]))) == 0


def test_sasrec_causal():
    m = _model("sasrec")
    x = torch.tensor([[3, 4, 5, 6, 7, 8]])
    lens = torch.tensor([6])
    h1 = m.states(x, lens)
    x2 = x.clone()
    x2[0, 4] = 20  # change a later item
    h2 = m.states(x2, lens)
    torch.testing.assert_close(h1[0, :4], h2[0, :4])  # earlier outputs unchanged
    assert not torch.allclose(h1[0, 4], h2[0, 4])  # the changed position did change


def test_sasrec_last_position_matches_the_full_pass():
    """encode computes SASRec's last block at each row's last position only: the same state as the full pass read
    at lengths - 1, for lengths from 1 to the padded width; a wrong position or a missing causal mask would not be."""
    m = _model("sasrec")
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, N + 1, (6, 10), generator=g)
    lens = torch.tensor([1, 2, 5, 7, 9, 10])
    x[torch.arange(10)[None] >= lens[:, None]] = 0  # right padding
    with torch.no_grad():
        full = m.states(x, lens)[torch.arange(6), lens - 1]
        fast = m.encode(x, lens)
        wrong = m.states(x, lens)[torch.arange(6), torch.clamp(lens - 2, min=0)]
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fast[1:], wrong[1:], atol=1e-3)


@pytest.mark.parametrize("bb", BACKBONES)
@pytest.mark.parametrize("variant", ["id", "id_text"])
def test_padding_invariance(bb, variant):
    """More padding, or a longer neighbour in the batch, leaves a sequence's representation unchanged."""
    m = _model(bb, variant)
    seq = torch.tensor([[5, 9, 5, 11]])
    alone = m.encode(seq, torch.tensor([4]))
    padded = m.encode(torch.tensor([[5, 9, 5, 11, 0, 0, 0]]), torch.tensor([4]))
    batch = m.encode(torch.tensor([[5, 9, 5, 11, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7]]), torch.tensor([4, 7]))
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[0], batch[0], atol=1e-5, rtol=1e-5)


def test_srgnn_graph_dedupes_nodes_and_edges():
    from slim.models.srgnn import session_graph

    items = torch.tensor([[5, 9, 5, 9, 0], [2, 2, 3, 0, 0]])
    nodes, alias, (src, dst, w_in, w_out) = session_graph(items, torch.tensor([4, 3]))
    assert sorted(nodes.tolist()) == [2, 3, 5, 9]
    assert alias[0, 0] == alias[0, 2] and alias[0, 1] == alias[0, 3] and alias[0, 4] == -1
    # session 0 has distinct edges 5->9, 9->5; session 1: 2->2, 2->3 (out-degree of 2 is 2)
    assert len(src) == 4
    two = alias[1, 0].item()
    assert sorted(w_out[src == two].tolist()) == [0.5, 0.5]


@pytest.mark.parametrize("bb,loss", [(b, "bce") for b in BACKBONES] + [("sasrec", "ce")])
def test_overfits_tiny_batch(bb, loss):
    """A few sequences with fixed next items: training drives the loss down and ranks the targets first."""
    spec = RunSpec(bb, "id", 0, hidden=H, max_len=10, loss=loss, num_negatives=4)
    _, cfg_cls = REGISTRY[bb]
    no_drop = {"dropout": 0.0} if "dropout" in {f.name for f in dataclasses.fields(cfg_cls)} else {}
    m = _model(bb, backbone_cfg=cfg_cls(**no_drop))  # dropout fights memorisation; this checks capacity + loss
    m.train()
    rng = np.random.default_rng(0)
    seqs = torch.from_numpy(rng.integers(1, N + 1, (8, 6)))
    lens = torch.full((8,), 6)
    targets = torch.from_numpy(rng.integers(1, N + 1, 8))
    if m.per_position:
        y = torch.zeros_like(seqs)
        y[:, :-1] = seqs[:, 1:]
        y[:, -1] = targets
    else:
        y = targets
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(400):
        loss_v, _ = batch_loss(m, spec, seqs, y, lens, gen)
        first = first if first is not None else float(loss_v.detach())
        opt.zero_grad()
        loss_v.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        sc = m.score_all(m.encode(seqs, lens))
        sc[:, 0] = -1e9
    assert float(loss_v.detach()) < 0.3 * first
    acc = float((sc.argmax(1) == targets).float().mean())
    assert acc >= 0.75


def test_unknown_backbone_and_variant():
    with pytest.raises(ValueError, match="backbone"):
        Recommender("bert4rec", N, H, max_len=10)
    with pytest.raises(ValueError, match="variant"):
        build("sasrec", N, H, variant="image", max_len=10)
    with pytest.raises(ValueError, match="item-text"):
        build("sasrec", N, H, variant="id_text", max_len=10)


def test_user_text_fusion_plugs_in():
    """The SLIM variant: a user-text embedding fused with s_seq through g_l/g_f, same backbone."""
    m = _model("gru4rec", user_text_dim=7)
    x, lens = torch.tensor([[3, 4, 5]]), torch.tensor([3])
    u1, u2 = torch.zeros(1, 7), torch.ones(1, 7)
    assert m.encode(x, lens, u1).shape == (1, H)
    assert not torch.allclose(m.encode(x, lens, u1), m.encode(x, lens, u2))
    # no rationale (None, or use=False) -> the learned missing vector, the same either way
    assert torch.allclose(m.encode(x, lens), m.encode(x, lens, u2, torch.tensor([False])))
    assert m.user_fusion.missing.requires_grad
