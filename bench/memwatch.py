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
        self.peak_titles: dict[str, int] = {}  # RSS bytes by process title at the peak sample
        self.progress, self.samples = progress, []
        self.titles: list[dict[str, int]] = []  # RSS bytes by process title, one dict per kept sample
        self._last_titles: dict[str, int] = {}
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (process title, CPU seconds), last seen
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        rss = me.memory_info().rss
        by_title = {"driver (this process)": rss}
        t = me.cpu_times()
        self.cpu[me.pid] = "driver (this process)", t.user + t.system
        for c in me.children(recursive=True):
            try:
                r, title, t = c.memory_info().rss, _title(c), c.cpu_times()
            except psutil.Error:
                continue
            by_title[title] = by_title.get(title, 0) + r
            self.cpu[c.pid] = title, t.user + t.system  # Ray retitles a worker per task
        self._last_titles = by_title
        return sum(by_title.values())

    def rss_change_by_title(self, lo: tuple[float, float], hi: tuple[float, float], top: int = 5) -> list:
        """Mean RSS (MB) by process title over the samples whose progress lies in `lo`, then in `hi`: the
        titles whose memory changed most between the two, as (title, MB in lo, MB in hi)."""
        def mean(rng):
            picked = [d for (_, _, p), d in zip(self.samples, self.titles) if rng[0] <= p < rng[1]]
            keys = {k for d in picked for k in d}
            return {k: sum(d.get(k, 0) for d in picked) / max(len(picked), 1) / 2**20 for k in keys}

        a, b = mean(lo), mean(hi)
        rows = [(k, a.get(k, 0.0), b.get(k, 0.0)) for k in set(a) | set(b)]
        return sorted(rows, key=lambda r: -abs(r[2] - r[1]))[:top]

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
            if rss > self.peak:
                self.peak, self.peak_titles = rss, self._last_titles
            if self.progress is not None:
                try:
                    self.samples.append((time.perf_counter() - t0, rss, self.progress()))
                    self.titles.append(self._last_titles)
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


def peaks_by_fifth(samples: list, n: int) -> list[float]:
    """samples (t, bytes, progress out of n) -> peak MB while each fifth of the n units was in progress."""
    peaks: dict[int, float] = {}
    for _, rss, done in samples:
        k = min(4, int(done) * 5 // max(n, 1))
        peaks[k] = max(peaks.get(k, 0.0), rss / 2**20)
    return [peaks.get(k, float("nan")) for k in range(5)]


def plot_rss(samples: list, out, n: int, xlabel: str, title: str):
    """RSS (MB) against progress, as a PNG at `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([done for _, _, done in samples], [rss / 2**20 for _, rss, _ in samples], lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("RSS, driver + Ray (MB)")
    ax.set_xlim(0, n)
    ax.set_ylim(0, None)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
