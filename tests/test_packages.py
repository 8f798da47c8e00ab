"""Every deployable installs and imports under the one ``lmforge`` namespace."""

from __future__ import annotations

import importlib
from importlib.metadata import requires

import pytest

SERVICES = ["ingest", "preprocess", "trainer", "registry", "inference", "gateway"]


@pytest.mark.parametrize("service", SERVICES)
def test_service_package_imports_and_depends_on_common(service: str) -> None:
    module = importlib.import_module(f"lmforge.{service}")
    assert module.__doc__
    deps = requires(f"lmforge-{service}") or []
    assert any(d.startswith("lmforge-common") for d in deps)
    assert not any(d.startswith(f"lmforge-{other}") for d in deps for other in SERVICES), (
        "services never import each other"
    )


def test_common_and_devstack_import() -> None:
    for name in ("lmforge.common", "lmforge.common.kafka", "lmforge.common.db", "lmforge.devstack.servers"):
        importlib.import_module(name)
