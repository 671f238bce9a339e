"""Draws that stay put as a table grows: a key's place in a sample depends on a hash of (seed, key) alone, not on
its row, so a snapshot with x% more keys changes about x% of a sample of the smallest hashes (the teacher's users,
`data.max_users`, `train.max_users`)."""

from __future__ import annotations

import hashlib

import numpy as np


def key_hashes(keys, seed: int) -> np.ndarray:
    """uint64 per key: 8 bytes of blake2b("<seed>:<key>"), the same in every process and Python version (the
    built-in hash() of a str is salted per process)."""
    def one(k) -> int:
        return int.from_bytes(hashlib.blake2b(f"{int(seed)}:{k}".encode(), digest_size=8).digest(), "big")

    return np.fromiter((one(k) for k in keys), dtype=np.uint64)


def smallest(keys, seed: int, k: int) -> np.ndarray:
    """Positions in `keys` of the k keys with the smallest hashes, in position order; ties by position."""
    h = key_hashes(keys, seed)
    return np.sort(np.argsort(h, kind="stable")[:k])
