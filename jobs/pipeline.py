"""The whole pipeline, or some stages: python jobs/pipeline.py --config configs/tiny.yaml [--stages data,train]"""

import sys

from slim.runner.cli import main_pipeline as main

if __name__ == "__main__":
    sys.exit(main())
