import uvicorn

from .app import build_app
from .settings import InferenceSettings

if __name__ == "__main__":
    settings = InferenceSettings()
    uvicorn.run(
        build_app(settings),
        host=settings.http.host,
        port=settings.http.port,
        log_config=None,
        access_log=settings.access_log,
    )
