"""Encode item text and user rationales (sentence-transformers on Ray Data): python jobs/encode.py --config configs/games.yaml"""

import sys

from slim.runner.cli import main_stage

if __name__ == "__main__":
    sys.exit(main_stage("encode"))
