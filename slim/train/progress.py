"""The train stage's console line while runs train as Ray tasks: the latest epoch (run, epoch, validation NDCG@10)
and an ETA that counts epochs, not finished runs (runs finish in bursts, so a count of runs jumps).

Each task reports every epoch through a small Ray queue (slim.train.fanout) that the driver drains while it waits
for the tasks; `EpochBoard` keeps the figures and `Progress` prints the line (in place on a terminal, else at most
every 30 s, the first epoch at once).
"""

from __future__ import annotations

import time
from typing import Optional

from slim.runtime.console import Progress, duration


class EpochBoard:
    """ETA = epochs still to train over all runs x measured seconds per epoch / runs training at once.

    Epochs still to train: a run stops early (patience), so once some runs finished the expected epochs per run are
    theirs on average (at most `max_epochs`), else `max_epochs`; a run past that expectation has at least one more.
    Seconds per epoch: the run's own mean (training and validation), else the mean over the runs measured. Runs at
    once: the most runs seen training together (between their first epoch and their end)."""

    def __init__(self, runs: list[str], max_epochs: int, progress: Optional[Progress] = None, clock=time.monotonic):
        self.runs, self.max_epochs, self.clock = list(runs), max_epochs, clock
        self.progress = progress or Progress("train", len(self.runs), "runs")
        self.t0 = clock()
        self.epochs: dict[str, int] = {}  # run -> epochs done (a retried task starts again from 0)
        self.seconds: dict[str, list] = {}  # run -> seconds of each epoch reported
        self.done: dict[str, int] = {}  # finished run -> epochs it ran
        self.peak, self.last, self.shown_first = 1, None, False

    def epoch(self, rec: dict) -> None:
        """A task's report after an epoch: run, epoch (from 0), valid_ndcg10, seconds."""
        run = rec["run"]
        self.epochs[run] = rec["epoch"] + 1
        self.seconds.setdefault(run, []).append(float(rec["seconds"]))
        self.last = rec
        self.peak = max(self.peak, len([r for r in self.epochs if r not in self.done]))
        self._show(first=not self.shown_first)
        self.shown_first = True

    def finished(self, run: str, epochs_run: int) -> None:
        self.done[run] = epochs_run
        self.epochs[run] = epochs_run
        self._show()

    def expected_epochs(self) -> float:
        if not self.done:
            return float(self.max_epochs)
        return min(float(self.max_epochs), sum(self.done.values()) / len(self.done))

    def eta_s(self) -> Optional[float]:
        """Seconds until every run is done; None before any epoch was measured."""
        measured = {r: sum(s) / len(s) for r, s in self.seconds.items() if s}
        if not measured:
            return None
        mean = sum(measured.values()) / len(measured)
        todo = [r for r in self.runs if r not in self.done]
        work = sum(self.left(r) * measured.get(r, mean) for r in todo)
        return work / max(1, min(self.peak, len(todo)))

    def left(self, run: str) -> float:
        """Epochs still expected of an unfinished run."""
        done = self.epochs.get(run, 0)
        return max(self.expected_epochs() - done, 1.0 if done < self.max_epochs else 0.0)

    def line(self) -> str:
        n, total = len(self.done), len(self.runs)
        if n == total:
            return f"train: {n}/{total} runs done in {duration(self.clock() - self.t0)}"
        head = f"train: {n}/{total} runs done"
        if self.last is None:
            return head
        r = self.last
        head += (f"; {r['run']} epoch {r['epoch'] + 1}/{self.max_epochs}, valid NDCG@10 {r['valid_ndcg10']:.2f}")
        eta, todo = self.eta_s(), [x for x in self.runs if x not in self.done]
        left = sum(self.left(x) for x in todo)
        per = sum(sum(s) / len(s) for s in self.seconds.values()) / max(1, len(self.seconds))
        each = f"{per:.1f}s" if per < 10 else f"{per:,.0f}s"
        return (head + f"; ETA {duration(eta)} ({left:,.0f} epoch{'' if round(left) == 1 else 's'} left at ~{each} "
                f"each, {max(1, min(self.peak, len(todo)))} at a time)")

    def _show(self, first: bool = False) -> None:
        key = (len(self.done), sum(self.epochs.values()))
        self.progress.show(self.line(), key, final=len(self.done) == len(self.runs), now=first)

    def close(self) -> None:
        self.progress.close()


# The driver waits for the tasks at most this long between drains of the epoch queue.
POLL_S = 2.0


def epoch_queue():
    """A Ray queue the tasks put their epoch records on (an actor holding no CPU); None if it cannot start, and the
    runs train without per-epoch lines on the console."""
    from ray.util.queue import Queue

    try:
        return Queue(actor_options={"num_cpus": 0})
    except Exception as e:  # noqa: BLE001 - progress is a convenience: training goes on without it
        import logging

        logging.getLogger(__name__).warning("no per-epoch progress on the console (%s: %s)", type(e).__name__, e)
        return None


def report(queue, rec: dict) -> None:
    """In a task: one epoch record to the driver; a lost queue never stops a run."""
    if queue is None:
        return
    try:
        queue.put_nowait({k: rec[k] for k in ("run", "epoch", "valid_ndcg10", "seconds")})
    except Exception:  # noqa: BLE001 - the driver is gone or the queue died: the run's metrics still get written
        pass


def drain(queue) -> list:
    """In the driver: every epoch record reported since the last drain."""
    if queue is None:
        return []
    try:
        n = queue.qsize()
        return queue.get_nowait_batch(n) if n else []
    except Exception:  # noqa: BLE001 - as report: the console line stops moving, the stage does not fail
        return []


def close(queue) -> None:
    if queue is not None:
        try:
            queue.shutdown(force=True)
        except Exception:  # noqa: BLE001 - Ray already gone (a stopped job): nothing left to free
            pass
