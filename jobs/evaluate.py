"""Evaluate trained recommenders, write reports/: python jobs/evaluate.py --config configs/games.yaml"""

import sys

from slim.runner.cli import main_stage

if __name__ == "__main__":
    sys.exit(main_stage("evaluate"))
