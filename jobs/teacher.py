"""Teacher rationales over an OpenAI-compatible API: python jobs/teacher.py --config configs/games.yaml

Add teacher.dry_run=true to print the estimated tokens and cost first. The API key comes from the environment
variable named by teacher.api_key_env (OPENAI_API_KEY by default), never from the config.
"""

import sys

from slim.runner.cli import main_stage

if __name__ == "__main__":
    sys.exit(main_stage("teacher"))
