"""Ray Serve: a trained recommender from a finished run directory behind an HTTP endpoint.

settings.py  ServeConfig (the `serve:` config section), its checks and the token reader
stage.py     `run`, the stage entry that starts the app and blocks (or, with serve.swap, swaps a run in and returns)
swap.py      a newly trained run into a running endpoint in place (`jobs/serve.py --swap`); `model_label`, the
             `<run>@<checkpoint>` every answer names
model.py     everything that reads the run directory and calls the model (one place to swap for the library's
             explanation function when it lands)
app.py       the FastAPI ingress + Serve deployment, `build_app` (a builder for `serve run` / `serve deploy`)
page.py      the HTML page at `/`
"""

from slim.serve.settings import ServeConfig

__all__ = ["ServeConfig"]
