"""Peak resident memory of this process and all its descendants (Ray's raylet and workers included).

With `progress` (a callable returning a number, e.g. rows written so far), every sample is kept as
(seconds since start, bytes, progress), so memory can be plotted against work done.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import psutil


def _title(p: psutil.Process) -> str:
    cmd = p.cmdline()
    head = cmd[0] if cmd else p.name()
    if head.startswith("ray::") or "VLLM" in head or "EngineCore" in head:
        return head.split(" ")[0][:60]  # Ray workers and vLLM set their process title
    return p.name()[:40]


class PeakRSS:
    def __init__(self, interval: float = 0.2, progress: Optional[Callable[[], float]] = None):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.progress, self.samples = progress, []
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (process title, CPU seconds), last seen
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        t = me.cpu_times()
        self.cpu[me.pid] = "driver (this process)", t.user + t.system
        for c in me.children(recursive=True):
            try:
                total += c.memory_info().rss
                t = c.cpu_times()
                self.cpu[c.pid] = _title(c), t.user + t.system  # Ray retitles a worker per task
            except psutil.Error:
                pass
        return total

    def cpu_by_title(self) -> dict[str, float]:
        """CPU seconds spent inside the `with` block by this process and its descendants, summed by process title
        (Ray names its workers by task/actor). A process that exited between two samples loses its last interval."""
        out: dict[str, float] = {}
        for pid, (title, s) in self.cpu.items():
            out[title] = out.get(title, 0.0) + s - self.cpu0.get(pid, (title, 0.0))[1]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def _loop(self):
        t0 = time.perf_counter()
        while not self._stop.is_set():
            rss = self._sample()
            self.peak = max(self.peak, rss)
            if self.progress is not None:
                try:
                    self.samples.append((time.perf_counter() - t0, rss, self.progress()))
                except OSError:  # a file vanished between listing and reading: next sample
                    pass
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self._sample()
        self.cpu0 = dict(self.cpu)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20
