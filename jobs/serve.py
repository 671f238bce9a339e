"""Serve a trained recommender over HTTP until interrupted: python jobs/serve.py --config configs/tiny.yaml

Which run (serve.backbone / variant / seed, else the best by valid NDCG@10), host, port, replicas and batching come
from the `serve:` section; e.g. `serve.port=8001 serve.variant=id_text`. Also: `serve run slim.serve.app:build_app
config=configs/tiny.yaml` (see slim/serve/app.py).
"""

import sys

from slim.runner.cli import main_stage

if __name__ == "__main__":
    sys.exit(main_stage("serve"))
