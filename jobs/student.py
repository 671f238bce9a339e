"""Student rationales for every user (vLLM on Ray Data): python jobs/student.py --config configs/games.yaml"""

import sys

from slim.runner.cli import main_stage

if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    sys.exit(main_stage("student"))
