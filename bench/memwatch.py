"""Peak memory of this process and all its descendants (Ray's raylet and workers included).

Two sums over the processes, sampled together:
- PSS (proportional set size, from /proc/PID/smaps_rollup): each shared page is split among the processes that
  map it, so the sum counts it once. This is the memory the job holds, and the figure the benches report first.
- RSS: each process's resident pages, shared ones included. Summed over Ray's processes it counts the same pages
  many times: every worker maps torch's libraries, and every worker that touches the object store (a shared-memory
  file) keeps those store pages in its own RSS. A Ray actor's RSS therefore rises as it touches store pages it had
  not touched before, while the store itself does not grow (bench/results/encode_scale.md).
Per process title we also keep `Anonymous` (the process's own heap, mostly private) to tell a leak from sharing.

With `progress` (a callable returning a number, e.g. rows written so far), every sample is kept as
(seconds since start, PSS bytes, progress), so memory can be plotted against work done.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import psutil

DRIVER = "driver (this process)"


def _title(p: psutil.Process) -> str:
    cmd = p.cmdline()
    head = cmd[0] if cmd else p.name()
    if head.startswith("ray::") or "VLLM" in head or "EngineCore" in head:
        return head.split(" ")[0][:60]  # Ray workers and vLLM set their process title
    return p.name()[:40]


def _mem(p: psutil.Process) -> tuple[int, int, int]:
    """(RSS, PSS, anonymous) bytes; where smaps_rollup cannot be read (not Linux, no permission), PSS and
    anonymous fall back to RSS and RSS minus its shared pages."""
    try:
        with open(f"/proc/{p.pid}/smaps_rollup") as f:
            kb = {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in f)
                  if k in ("Rss", "Pss", "Anonymous")}
        return kb["Rss"] * 1024, kb["Pss"] * 1024, kb["Anonymous"] * 1024
    except (OSError, KeyError, ValueError):
        mi = p.memory_info()
        return mi.rss, mi.rss, mi.rss - mi.shared


class PeakMem:
    def __init__(self, interval: float = 0.2, progress: Optional[Callable[[], float]] = None):
        self.interval, self._stop = interval, threading.Event()
        self.peak = self.peak_rss = 0  # bytes: summed PSS, summed RSS (each at its own peak sample)
        self.peak_titles: dict[str, int] = {}  # PSS bytes by process title at the PSS peak
        self.progress, self.samples = progress, []
        self.titles: list[dict[str, int]] = []  # PSS bytes by process title, one dict per kept sample
        self.anon_titles: list[dict[str, int]] = []  # anonymous bytes by process title, same samples
        self.rss_samples: list[int] = []  # summed RSS, same samples
        self._last: tuple = (0, {}, {})  # (summed RSS, PSS by title, anonymous by title)
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (process title, CPU seconds), last seen
        self.proc_peak: dict[int, tuple[str, int]] = {}  # pid -> (process title then, PSS bytes) at its own peak
        self.proc_anon_peak: dict[int, tuple[str, int]] = {}  # pid -> (title then, anonymous bytes) at its peak
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> int:
        """Summed PSS now; the summed RSS and the split by title are kept in self._last."""
        me = psutil.Process()
        rss, pss, anon = _mem(me)
        pss_by, anon_by = {DRIVER: pss}, {DRIVER: anon}
        self._peak_of(me.pid, DRIVER, pss, anon)
        t = me.cpu_times()
        self.cpu[me.pid] = DRIVER, t.user + t.system
        for c in me.children(recursive=True):
            try:
                (r, s, a), title, t = _mem(c), _title(c), c.cpu_times()
            except psutil.Error:
                continue
            rss += r
            self._peak_of(c.pid, title, s, a)
            pss_by[title] = pss_by.get(title, 0) + s
            anon_by[title] = anon_by.get(title, 0) + a
            self.cpu[c.pid] = title, t.user + t.system  # Ray retitles a worker per task
        self._last = rss, pss_by, anon_by
        return sum(pss_by.values())

    def _peak_of(self, pid: int, title: str, pss: int, anon: int) -> None:
        if pss > self.proc_peak.get(pid, ("", -1))[1]:
            self.proc_peak[pid] = title, pss
        if anon > self.proc_anon_peak.get(pid, ("", -1))[1]:
            self.proc_anon_peak[pid] = title, anon

    def process_peaks_mb(self, top: int = 5, anon: bool = False) -> list:
        """The processes with the highest PSS (or, with `anon`, anonymous memory: the process's own heap, not the
        shared object store or libraries) each reached, as (title at that moment, MB), highest first."""
        rows = sorted((self.proc_anon_peak if anon else self.proc_peak).values(), key=lambda r: -r[1])[:top]
        return [(t, b / 2**20) for t, b in rows]

    def change_by_title(self, lo: tuple[float, float], hi: tuple[float, float], top: int = 5,
                        anon: bool = False) -> list:
        """Mean PSS (or, with `anon`, anonymous memory) in MB by process title over the samples whose progress lies
        in `lo`, then in `hi`: the titles whose memory changed most between the two, as (title, MB lo, MB hi)."""
        kept = self.anon_titles if anon else self.titles

        def mean(rng):
            picked = [d for (_, _, p), d in zip(self.samples, kept) if rng[0] <= p < rng[1]]
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
            t = time.perf_counter()
            pss = self._sample()
            cost = time.perf_counter() - t
            rss, pss_by, anon_by = self._last
            self.peak_rss = max(self.peak_rss, rss)
            if pss > self.peak:
                self.peak, self.peak_titles = pss, pss_by
            if self.progress is not None:
                try:
                    self.samples.append((time.perf_counter() - t0, pss, self.progress()))
                    self.titles.append(pss_by)
                    self.anon_titles.append(anon_by)
                    self.rss_samples.append(rss)
                except OSError:  # a file vanished between listing and reading: next sample
                    pass
            # Reading smaps_rollup walks every resident page (~80 ms for a 3 GB process here): the wait grows with
            # the cost so that the sampler takes at most ~10% of one core from the job it measures.
            time.sleep(max(self.interval, 9 * cost))

    def __enter__(self):
        self.base = self._sample()
        self.base_rss = self._last[0]
        self.cpu0 = dict(self.cpu)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        """Peak summed PSS: shared pages counted once."""
        return self.peak / 2**20

    @property
    def peak_rss_mb(self) -> float:
        """Peak summed RSS: shared pages counted in every process that maps them (the figure earlier reports gave)."""
        return self.peak_rss / 2**20


def peaks_by_fifth(samples: list, n: int) -> list[float]:
    """samples (t, bytes, progress out of n) -> peak MB while each fifth of the n units was in progress."""
    peaks: dict[int, float] = {}
    for _, b, done in samples:
        k = min(4, int(done) * 5 // max(n, 1))
        peaks[k] = max(peaks.get(k, 0.0), b / 2**20)
    return [peaks.get(k, float("nan")) for k in range(5)]


def plot_mem(mem: PeakMem, out, n: int, xlabel: str, title: str):
    """Summed PSS and summed RSS (MB) against progress, as a PNG at `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [d for _, _, d in mem.samples]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(done, [b / 2**20 for _, b, _ in mem.samples], lw=1, label="PSS (shared pages once)")
    ax.plot(done, [b / 2**20 for b in mem.rss_samples], lw=1, ls="--", label="RSS summed (shared pages per process)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("driver + Ray processes (MB)")
    ax.set_xlim(0, n)
    ax.set_ylim(0, None)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
