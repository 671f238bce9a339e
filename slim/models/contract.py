"""What a backbone must provide: the contract every entry of `slim.models.REGISTRY` meets.

A backbone is the sequence encoder inside a `Recommender`: the item side (`ItemRepr`: id / id_text / text) gives it
item vectors, the optional SLIM fusion (`UserFusion`) takes its output, and scoring is a dot product with the item
table. Adding one is a module beside `gru4rec.py` plus one line in `REGISTRY` (name -> (class, config class)); the
train, evaluate, explain and serve code read only what `Backbone` below names.

`check_backbone` verifies a registered class by running it on a small batch (shapes, causality, the optional
`last`); `tests/stages/test_backbone_contract.py` runs it over every registered backbone.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Protocol

import torch


class Backbone(Protocol):
    """The attributes the training and ranking code read, with their shapes.

    B = batch, L = max_len (right-padded sequences), H = hidden.

    - `per_position` (class attribute, bool): True if `forward` returns one state per position, [B, L, H], each
      state seeing only positions <= its own (causal): training then uses every next-item target of a sequence in
      one pass (`slim.recsys.data.train_windows`). False if it returns one state per sequence, [B, H]: training
      expands every prefix into its own example (`train_prefixes`). Read from the class, never from a built model
      (`slim.recsys.spec.example_kind`).
    - `__init__(hidden, cfg, max_len)`: `cfg` is the backbone's config class (a frozen dataclass whose every field
      has a default; `train.<backbone>` in a config sets them), `max_len` the longest sequence it will see.
    - `forward(x, items, lengths)`: x [B, L, H] float item vectors (zero at padding), items [B, L] long item ids
      (0 = padding, right-padded), lengths [B] long >= 1 -> [B, L, H] (per_position) or [B, H].
    - optionally `last(x, items, lengths) -> [B, H]`: the state at position lengths-1 only, equal to
      `forward(...)[b, lengths[b]-1]`; ranking and serving call it when present (cheaper than the full pass).
    """

    per_position: ClassVar[bool]

    def forward(self, x: torch.Tensor, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor: ...


class ContractError(TypeError):
    """A backbone class that does not meet the contract; the message names the backbone and the broken rule."""


def _batch(num_items: int, hidden: int, max_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([max_len, 1, max_len // 2, 3])  # [B]: full, one item, and two in between
    pos = torch.arange(max_len)[None]  # [1, L]
    items = torch.randint(1, num_items + 1, (len(lengths), max_len), generator=g) * (pos < lengths[:, None])
    x = torch.randn(len(lengths), max_len, hidden, generator=g) * (items > 0).unsqueeze(-1)  # [B, L, H]
    return x, items, lengths


def check_backbone(name: str, cls: type, cfg_cls: type, hidden: int = 16, max_len: int = 8) -> None:
    """Raise ContractError naming `name` and the rule if `cls` (with its default `cfg_cls()`) breaks the contract."""
    def fail(rule: str):
        raise ContractError(f"backbone {name!r} ({cls.__name__}): {rule}")

    if not isinstance(getattr(cls, "per_position", None), bool):
        fail("needs a class attribute per_position: bool")
    if not dataclasses.is_dataclass(cfg_cls):
        fail(f"its config class {cfg_cls.__name__} must be a dataclass with a default for every field")
    if not issubclass(cls, torch.nn.Module) or cls.forward is torch.nn.Module.forward:
        fail("must be a torch.nn.Module with its own forward(x, items, lengths)")  # Module's own only raises
    model = cls(hidden, cfg_cls(), max_len).eval()
    x, items, lengths = _batch(50, hidden, max_len)
    with torch.no_grad():
        h = model(x, items, lengths)
        want = (len(lengths), max_len, hidden) if cls.per_position else (len(lengths), hidden)
        if tuple(h.shape) != want:
            fail(f"forward returned {tuple(h.shape)}, expected {want} (per_position={cls.per_position})")
        if not torch.isfinite(h).all():
            fail("forward returned NaN or inf on a right-padded batch")
        _check_causal(model, x, items, lengths, h, fail)
        if hasattr(model, "last"):
            at = h[torch.arange(len(h)), lengths - 1] if cls.per_position else h
            got = model.last(x, items, lengths)
            if tuple(got.shape) != (len(lengths), hidden) or not torch.allclose(got, at, atol=1e-5):
                fail("last(...) must equal forward(...) at position lengths-1, shape [B, H]")


def _check_causal(model, x, items, lengths, h, fail) -> None:
    """A per-position state must not see later positions: changing everything after position t leaves h[:, :t+1]."""
    if not model.per_position:
        return
    t = 1
    x2, items2 = x.clone(), items.clone()
    x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
    items2[:, t + 1:] = (items2[:, t + 1:] % 7) + 1
    h2 = model(x2, items2, lengths)
    if not torch.allclose(h[:, :t + 1], h2[:, :t + 1], atol=1e-5):
        fail("per_position states see later positions: the state at t must depend on positions <= t only")
