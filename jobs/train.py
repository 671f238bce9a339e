"""Train GRU4Rec/SASRec/SRGNN (id, id_text) over seeds: python jobs/train.py --config configs/games.yaml"""

import sys

from slim.runner.cli import main_stage

if __name__ == "__main__":
    sys.exit(main_stage("train"))
