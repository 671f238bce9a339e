"""The planted-signal figures of tests/test_slim.py, printed, for a before/after comparison of a refactor
(issue 28: "the same planted-signal figures before and after"). Run it at two commits and diff the outputs:

  PYTHONPATH=. .venv/bin/python bench/planted_figures.py > /tmp/after.txt

Same data (tests/slimdata.py), same train stage and settings as the test's fixture; the figures are test-split
NDCG@10 (full ranking and uni100) of GRU4Rec-CE seed 0 per variant, then of slim and text_match on shuffled
rationales (the control that must lose the signal).
"""

import json
import tempfile
from pathlib import Path

from slim.runtime.raycluster import init_ray
from tests import slimdata as G
from tests.test_slim import _train

PLAIN = ("id", "id_text", "slim_teacher", "slim", "text_match")
SHUFFLED = ("slim", "text_match")


def main() -> None:
    init_ray(None, num_cpus=6)
    for shuffle, variants in ((False, PLAIN), (True, SHUFFLED)):
        root = Path(tempfile.mkdtemp())
        G.write(root, shuffle_rationales=shuffle)
        _train(root, variants)
        for v in variants:
            name = "text_match-whole-ce-s0" if v == "text_match" else f"gru4rec-{v}-ce-s0"
            test = json.loads((root / "models" / name / "metrics.json").read_text())["test"]
            print(f"{('shuffled ' if shuffle else '') + v:22s} full NDCG@10 {test['full']['NDCG@10']:.4f}  "
                  f"uni100 NDCG@10 {test['uni100']['NDCG@10']:.4f}")


if __name__ == "__main__":
    main()
