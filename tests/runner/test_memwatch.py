"""bench/memwatch.py, the instrument behind every memory figure in bench/results: shared memory is counted once
in PSS and once per process in RSS, and it is not anonymous (heap) memory."""

import multiprocessing as mp
from multiprocessing import shared_memory

import psutil

from bench.memwatch import _mem

SIZE = 128 * 2**20


def _touch_when_told(name: str, go, touched, done):
    shm = shared_memory.SharedMemory(name=name)
    go.wait()
    shm.buf[::4096] = b"\x01" * len(shm.buf[::4096])  # one byte per page: every page resident in this process
    touched.set()
    done.wait()
    shm.close()


def test_shared_pages_count_once_in_pss_and_in_every_rss():
    ctx = mp.get_context("fork")
    shm = shared_memory.SharedMemory(create=True, size=SIZE)
    go, done = ctx.Event(), ctx.Event()
    touched = [ctx.Event(), ctx.Event()]
    kids = [ctx.Process(target=_touch_when_told, args=(shm.name, go, t, done)) for t in touched]
    try:
        for k in kids:
            k.start()
        before = [_mem(psutil.Process(k.pid)) for k in kids]  # (RSS, PSS, anonymous) bytes
        go.set()
        assert all(t.wait(30) for t in touched)
        after = [_mem(psutil.Process(k.pid)) for k in kids]
    finally:
        done.set()
        for k in kids:
            k.join(10)
        shm.close()
        shm.unlink()
    rss, pss, anon = (sum(a[i] - b[i] for a, b in zip(after, before)) / SIZE for i in range(3))
    assert 1.9 < rss < 2.2, rss  # both children hold every page
    assert 0.9 < pss < 1.2, pss  # ... and share them: counted once
    assert abs(anon) < 0.1, anon  # shared memory is not the heap
