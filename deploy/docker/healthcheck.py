"""Container healthcheck: ``GET /healthz`` on the port the service's own settings name.

The image serves any one of the six services (``LMFORGE_SERVICE``), each on its own default
port, which an ``LMFORGE_<SERVICE>_HTTP__PORT`` variable may change: so read the settings.
"""

from __future__ import annotations

import importlib
import os
import sys
import urllib.request


def main() -> int:
    service = os.environ["LMFORGE_SERVICE"]
    module = importlib.import_module(f"lmforge.{service}.settings")
    settings = getattr(module, f"{service.capitalize()}Settings")()
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.http.port}/healthz", timeout=3) as resp:
        return 0 if resp.status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
