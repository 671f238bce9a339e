"""The console a person reads (issue 29): live progress lines, the libraries' logs in <run_dir>/logs/<stage>.log,
--verbose to see them, and the one-screen headline."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slim.runtime import console
from slim.recsys.summary import headline

ROOT = Path(__file__).resolve().parents[2]

# A planted line from each source: a Ray task's stdout, Ray Data's own logging, our INFO and WARNING, a `say`.
PROBE = r'''
import logging, sys, time
from pathlib import Path
from slim.runtime import console
console.setup(verbose_flag=sys.argv[2] == "1")
with console.stage_log("probe", sys.argv[1]) as path:
    from slim.runtime.raycluster import init_ray
    init_ray(None, 2)
    import ray
    import ray.data

    @ray.remote
    def planted():
        print("PLANTED-WORKER-LINE", flush=True)
        return 1

    ray.get(planted.remote())
    ray.data.range(8).map_batches(lambda b: b).materialize()
    logging.getLogger("slim.probe").info("PLANTED-INFO")
    logging.getLogger("slim.probe").warning("PLANTED-WARNING")
    console.say("PLANTED-SAY")
    for _ in range(200):  # worker output reaches the driver a moment later
        if "PLANTED-WORKER-LINE" in Path(path).read_text():
            break
        time.sleep(0.1)
ray.shutdown()
'''


def _probe(tmp_path, verbose: bool) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_DATA_", "SLIM_VERBOSE", "RAY_ADDRESS"))}
    env.update(PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled")
    rd = tmp_path / ("verbose" if verbose else "quiet")
    r = subprocess.run([sys.executable, "-c", PROBE, str(rd), "1" if verbose else "0"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr, (rd / "logs" / "probe.log").read_text()


def test_quiet_console_and_stage_log_with_real_ray(tmp_path):
    """Every planted line is in the stage log; the quiet console has only the `say` line and our warning, while
    --verbose shows the worker's and Ray Data's lines too (so the quiet run's absence of them means something)."""
    out, log = _probe(tmp_path, verbose=False)
    for planted in ("PLANTED-WORKER-LINE", "PLANTED-INFO", "PLANTED-WARNING", "PLANTED-SAY", "Execution plan of Dataset",
                    "Started a local Ray instance"):
        assert planted in log, planted
    assert "PLANTED-SAY" in out and "PLANTED-WARNING" in out
    assert "PLANTED-WORKER-LINE" not in out and "PLANTED-INFO" not in out and "Dataset" not in out
    assert len(out.splitlines()) <= 3, out
    vout, vlog = _probe(tmp_path, verbose=True)
    for planted in ("PLANTED-WORKER-LINE", "PLANTED-INFO", "Execution plan of Dataset"):
        assert planted in vout, planted
    assert "PLANTED-WORKER-LINE" in vlog and vout.count("PLANTED-SAY") == 1  # said once, not again by logging


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("tty", [False, True])
def test_progress_line_rate_eta_and_throttle(tty):
    """100 users over 300 s: off a terminal a line at most every 30 s and the last one; on a terminal one line
    rewritten in place. Rate and ETA are those of the elapsed time."""
    stream, clock = io.StringIO(), _Clock()
    stream.isatty = lambda: tty
    p = console.Progress("student", 100, "users", every_s=30.0, stream=stream, clock=clock)
    for i in range(1, 101):
        clock.t = 3.0 * i
        p.update(i)
        if i == 50:
            assert p.line() == "student: 50/100 users (50%), 20.0 users/min, ETA 2m30s"
    text = stream.getvalue()
    fast = console.Progress("encode", 1000, "items", stream=io.StringIO(), clock=clock)
    clock.t += 4.0
    fast.done = 400
    assert fast.line() == "encode: 400/1,000 items (40%), 100.0 items/s, ETA 0m06s"  # at least 1/s: per second
    if tty:
        assert text.count("\n") == 1 and text.endswith("student: 100/100 users (100%), 20.0 users/min\n")
        assert text.count("\r") > 10  # rewritten in place
    else:
        lines = text.splitlines()
        assert 10 <= len(lines) <= 11 and lines[-1] == "student: 100/100 users (100%), 20.0 users/min"
        assert "\r" not in text


def _row(mean):
    return {"full": {"NDCG@10": [mean, 0.1, 2]}, "uni100": {"NDCG@10": [mean * 3, 0.1, 2]}, "seeds": [0, 1]}


def test_headline_is_one_screen_with_the_better_loss_and_slims_gains():
    res = {"users": 943, "items": 1349, "chance": {"full": {"NDCG@10": 0.06}},
           "rows": {"bce": {"sasrec-id": _row(5.8), "sasrec-id_text": _row(8.1), "sasrec-slim@all": _row(6.6),
                            "gru4rec-id": _row(4.0), "text_match (step3)": _row(1.1)},
                    "ce": {"sasrec-id": _row(9.9), "sasrec-id_text": _row(7.0), "sasrec-slim@all": _row(6.0),
                           "gru4rec-id": _row(3.0), "text_match (step3)": _row(1.5)}},
           "gains": [{"backbone": "sasrec", "loss": "bce", "protocol": "full", "model": "slim@all",
                      "baseline": "id_text", "gain_pct": -18.7, "p_wilcoxon": 2e-5, "n": 943},
                     {"backbone": "sasrec", "loss": "bce", "protocol": "full", "model": "slim@all",
                      "baseline": "history_text@all", "gain_pct": 1.2, "p_wilcoxon": 0.6, "n": 943},
                     {"backbone": "sasrec", "loss": "bce", "protocol": "uni100", "model": "slim@all",
                      "baseline": "id_text", "gain_pct": 9.0, "p_wilcoxon": 0.01, "n": 943}]}
    lines = headline(res, "runs/x/reports/results.md")
    text = "\n".join(lines)
    assert len(lines) <= 12 and "chance 0.06" in lines[0] and "943 users" in lines[0]
    row = {ln.split()[0]: ln.split()[1:] for ln in lines[2:6]}
    assert row["id"] == ["4.00", "bce", "9.90", "ce"] and row["id_text"] == ["-", "8.10", "bce"]
    assert "text_match (no IDs): step3 1.50 ce" in text
    assert "sasrec bce slim@all: vs id_text -18.7% (p 2e-05), vs history_text@all +1.2% (p 0.6)" in text
    assert "+9.0%" not in text  # the headline is full ranking only
    assert lines[-1].endswith("runs/x/reports/results.md")


def test_protocol_plot_groups_bars_by_backbone_one_colour_per_variant(tmp_path):
    """The report's NDCG@10 plot: backbones as groups (text_match last), each variant in one colour everywhere,
    the chance line; the PNG is written whole."""
    import matplotlib.image as mpimg

    from slim.evaluate import plots as P

    rows = {"gru4rec-id": (3.0, 0.4), "gru4rec-slim@all": (3.9, 1.0), "sasrec-id": (6.0, 0.7),
            "sasrec-id_text": (6.1, 1.4), "sasrec-slim@all": (4.6, 0.9), "text_match (step1)": (1.3, 0.1)}
    groups, variants, cells = P.grouped(rows)
    assert groups == ["gru4rec", "sasrec", "text_match"] and variants == ["id", "slim@all", "id_text", "step1"]
    assert cells[("sasrec", "slim@all")] == (4.6, 0.9) and ("gru4rec", "id_text") not in cells
    P.protocol_bars(tmp_path / "p.png", rows, "full", 0.41)
    img = mpimg.imread(tmp_path / "p.png")  # [H, W, 4]
    assert img.shape[0] > 200 and img.shape[1] > 400
    # the variant 'id' is drawn in one colour in both groups: that colour's pixels appear left and right
    blue = (abs(img[..., 0] - 0.12) < 0.02) & (abs(img[..., 1] - 0.47) < 0.02) & (abs(img[..., 2] - 0.71) < 0.02)
    orange = (abs(img[..., 0] - 1.0) < 0.02) & (abs(img[..., 1] - 0.50) < 0.03) & (abs(img[..., 2] - 0.05) < 0.03)
    cols, w = np.nonzero(blue.any(0))[0], img.shape[1]
    assert cols.min() < w * 0.3 and w * 0.35 < cols.max() < w * 0.7  # gru4rec and sasrec, never text_match
    assert orange.sum() > 100  # id_text has a colour of its own
