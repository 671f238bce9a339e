"""Move run directories from before 0.2 (student/, rationales/, embeddings/) to one folder per stage (distill/,
student/, encode/), keeping every finished stage current: python jobs/migrate.py runs/games [--dry-run]"""

import sys

from slim.runner.cli import main_migrate

if __name__ == "__main__":
    sys.exit(main_migrate())
