import logging

import uvicorn

from .app import build_app
from .settings import GatewaySettings

if __name__ == "__main__":
    settings = GatewaySettings()
    app = build_app(settings)
    # httpx logs every call to a service at INFO ("HTTP Request: POST http://..."): one line per
    # completion that the traces and metrics already carry. Failures are logged by downstream.py.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn.run(app, host=settings.http.host, port=settings.http.port, log_config=None, access_log=settings.access_log)
