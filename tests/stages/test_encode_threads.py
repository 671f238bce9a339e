"""One thread-count rule for an encoder actor (slim.runtime.threads.actor_threads): the count the stores' vector key
names (slim.encode.store.vector_key) is the count the actor pool hands each actor (slim.encode.actors.pool), for
explicit and derived counts alike, so a stored vector is never keyed by a count it was not computed with."""

import dataclasses

from slim.encode import store
from slim.encode.actors import pool
from slim.encode.settings import EncodeConfig
from slim.runtime import threads


def test_actor_threads_rule():
    cores = threads.usable_cores()
    assert threads.actor_threads(0, 0.5) == 1  # a fractional CPU: one thread, as Ray's floor gives inside it
    assert threads.actor_threads(0, 0) == 1
    assert threads.actor_threads(0, 1.9) == 1
    assert threads.actor_threads(0, 2.0) == min(2, cores)
    assert threads.actor_threads(3, 0.5) == min(3, cores)  # an explicit count wins over the CPUs asked for
    assert threads.actor_threads(10_000, 0.5) == cores  # never more than the cores here


def test_the_vector_key_names_the_count_the_actors_get():
    base = EncodeConfig()
    for kw in ({}, {"actor_cpus": 2.0}, {"actor_cpus": 1.5, "threads": 0}, {"threads": 2}, {"threads": 64},
               {"actor_cpus": 0.25, "threads": 1}):
        cfg = dataclasses.replace(base, **kw)
        given = pool(cfg, ("text",))["fn_constructor_kwargs"]["threads"]
        assert given > 0  # resolved before the actor starts: the actor does not decide again
        assert store.vector_key(cfg)["threads"] == given == threads.actor_threads(cfg.threads, cfg.actor_cpus), kw
    # and the key moves with the count: another count may move a vector's last bits
    assert store.vector_key(dataclasses.replace(base, threads=1)) != store.vector_key(
        dataclasses.replace(base, threads=2)) or threads.usable_cores() == 1
