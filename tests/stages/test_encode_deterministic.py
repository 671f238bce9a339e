"""Encode gives the same vectors for the same texts however they are batched (issue 42: a rerun moved 6 of 150 user
vectors by one float16 step because Ray Data cut its batches elsewhere). Real all-MiniLM-L6-v2 from its wheel, in
this process: the encoder the stage's actors run, fed the same texts in two different batchings."""

import random

import numpy as np
import pytest

from slim.io import columns as C

WORDS = ("game play level boss story graphics sound controller fun hard easy mario zelda quest puzzle racing "
         "strategy indie arcade co-op online multiplayer open-world remaster sequel soundtrack").split()


def _texts(n: int, seed: int = 0) -> list[str]:
    """Texts of 2..60 words (4 to ~80 word pieces): batches of them pad a lot."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 60))) for _ in range(n)]


def _batched(fn, texts: list, cuts: list) -> np.ndarray:
    """fn over consecutive slices of texts ending at `cuts`, concatenated: one batching of the same texts."""
    bounds = [0, *cuts, len(texts)]
    return np.concatenate([fn(texts[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a])


@pytest.fixture(scope="module")
def encoder():
    import torch

    from slim.runtime.llm_models import minilm_path
    from slim.text.encoder import Encoder

    before = torch.get_num_threads()
    yield Encoder(minilm_path(), (C.TEXT,), 0, 0.75, 1, "cpu")  # the stage's defaults, one thread
    torch.set_num_threads(before)  # the rest of the session as it was


def test_same_texts_in_two_batchings_give_identical_vectors(encoder):
    texts = _texts(80)
    one, other = [32, 64], [5, 20, 21, 50, 70]  # Ray Data's blocks cut anywhere

    def stage(part):  # the actor's call on a numpy batch -> [B, D] float16, as written to the output files
        return encoder({C.ITEM_ID: np.arange(len(part)), C.TEXT: np.array(part, dtype=object)})[f"emb_{C.TEXT}"]

    a, b = _batched(stage, texts, one), _batched(stage, texts, other)
    assert a.dtype == np.float16 and a.shape == (80, encoder.dim)
    assert np.array_equal(a, b), f"{int((a != b).any(1).sum())} of 80 vectors differ"
    assert np.allclose(np.linalg.norm(a.astype(np.float32), axis=1), 1, atol=2e-3)
    # the signal the grouping removes: the same texts padded beside different batchmates (sentence-transformers'
    # own batching, what the stage did before) do not all come out the same in float32
    plain = lambda part: encoder.st.encode(part, batch_size=len(part), normalize_embeddings=True)  # noqa: E731
    pa_, pb = _batched(plain, texts, one), _batched(plain, texts, other)
    assert (pa_ != pb).any(1).sum() >= 1
    # and the grouped vectors are the model's: as close to the padded ones as two paddings are to each other
    assert np.abs(_batched(encoder.embed, texts, one) - pa_).max() < 1e-6


def test_thread_count_moves_vectors_by_rounding_only(encoder):
    """Another thread count may change the summation order of some products: the report's bound on it (float32
    differences ~1e-7, so at most one float16 step in a written vector). One count, one result."""
    import torch

    texts = _texts(40, seed=1)
    one = encoder.embed(texts)
    torch.set_num_threads(2)
    try:
        two = encoder.embed(texts)
    finally:
        torch.set_num_threads(1)
    assert np.array_equal(encoder.embed(texts), one)  # back to one thread: the same vectors again
    assert np.abs(one - two).max() < 1e-6
    h1, h2 = one.astype(np.float16), two.astype(np.float16)  # as written
    ulp = np.spacing(np.maximum(np.abs(h1), np.abs(h2))).astype(np.float32)
    assert (np.abs(h1.astype(np.float32) - h2.astype(np.float32)) <= ulp).all()  # one float16 step at most
