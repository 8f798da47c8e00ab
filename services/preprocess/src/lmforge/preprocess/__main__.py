import sys

import uvicorn

from .app import build_app
from .recipe import RecipeError
from .settings import PreprocessSettings

if __name__ == "__main__":
    settings = PreprocessSettings()
    try:
        app = build_app(settings)
    except RecipeError as exc:  # a bad recipe stops the service before it consumes anything
        sys.exit(f"preprocess: {exc}")
    uvicorn.run(app, host=settings.http.host, port=settings.http.port, log_config=None)
