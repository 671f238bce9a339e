"""`make demo` as a test: configs/tiny.yaml end to end (data -> teacher -> distill -> student -> encode -> train ->
evaluate) on MovieLens-100K with the packaged models; ~20 min on 2 cores, so slow-marked (`make test-slow`)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def check_results(res: dict, variants=("id", "id_text", "slim_teacher", "slim")) -> None:
    """Every cell of the SLIM table filled with a number in [0, 100]; gains with p-values; chance beside."""
    for loss in ("bce", "ce"):
        rows = res["rows"][loss]
        for bb in ("gru4rec", "sasrec", "srgnn"):
            for v in variants:
                row = rows[f"{bb}-{v}"]
                for p in ("uni100", "pop100", "full", "full_keep"):
                    for m in ("NDCG@10", "Hit@10", "Hit@20"):
                        assert 0.0 <= row[p][m][0] <= 100.0 and row[p][m][2] == len(row["seeds"]) >= 1
        assert {f"text_match ({f})" for f in ("whole", "step1", "step2", "step3")} <= set(rows)
    assert all(0.0 < res["chance"][p]["NDCG@10"] < 100 for p in res["chance"])
    gains = {(g["model"], g["baseline"], g["backbone"], g["loss"], g["protocol"]): g for g in res["gains"]}
    for bb in ("gru4rec", "sasrec", "srgnn"):
        for loss in ("bce", "ce"):
            g = gains[("slim", "id_text", bb, loss, "full")]
            assert math.isfinite(g["gain_pct"]) and 0.0 <= g["p_wilcoxon"] <= 1.0 and 0.0 <= g["p_ttest"] <= 1.0


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path, cache_dir):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "jobs/pipeline.py", "--config", "configs/tiny.yaml", f"run_dir={tmp_path}",
                        f"data.cache_dir={cache_dir}"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    check_results(json.loads((tmp_path / "reports" / "results.json").read_text()))
    assert "headline: full NDCG@10" in r.stdout and "pipeline summary" in r.stdout
    assert (tmp_path / "reports" / "plots" / "long_tail_bce.png").exists()
