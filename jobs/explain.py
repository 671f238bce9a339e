"""Top-k items and the rationale behind them for one user of a finished run:
python jobs/explain.py --config configs/tiny.yaml --user 3 [--k 10] [--run sasrec-slim-bce-s0] [--json]"""

import sys

from slim.runner.cli import main_explain

if __name__ == "__main__":
    sys.exit(main_explain())
