"""Distil the teacher's rationales into a LoRA student in Ray Train:
python jobs/distill.py --config configs/tiny.yaml [distill.strategy=deepspeed]"""

import sys

from slim.runner.cli import main_stage

if __name__ == "__main__":
    sys.exit(main_stage("distill"))
