"""The planted-signal figures of tests/stages/test_slim.py, printed, for a before/after comparison of a refactor
(issue 28: "the same planted-signal figures before and after"). Run it at two commits and diff the outputs:

  PYTHONPATH=. .venv/bin/python bench/planted_figures.py > /tmp/after.txt

Same data, same train stage and settings as the test's fixture (slim/testing/planted.py: `write`, `FAST`, `train`);
the figures are test-split NDCG@10 (full ranking and uni100) of GRU4Rec-CE seed 0 per variant, then of slim and
text_match on shuffled rationales (the control that must lose the signal).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from slim.testing import planted  # noqa: E402

PLAIN = ("id", "id_text", "slim_teacher", "slim", "text_match")
SHUFFLED = ("slim", "text_match")


def main() -> None:
    harness.ray(6)
    for shuffle, variants in ((False, PLAIN), (True, SHUFFLED)):
        with harness.scratch() as root:
            planted.write(root, shuffle_rationales=shuffle)
            planted.train(root, variants)
            for v in variants:
                test = planted.split_metrics(root, v)
                print(f"{('shuffled ' if shuffle else '') + v:22s} full NDCG@10 {test['full']['NDCG@10']:.4f}  "
                      f"uni100 NDCG@10 {test['uni100']['NDCG@10']:.4f}")


if __name__ == "__main__":
    main()
