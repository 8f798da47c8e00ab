"""Each package's README says what it owns, its events and its settings, and stays true to the
code: every setting it names exists, every topic and event type it names is real, and every topic
the service's wiring consumes or produces is named."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from lmforge.common.events import Topic
from lmforge.common.events.payloads import PAYLOADS_BY_TYPE
from lmforge.common.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ["ingest", "preprocess", "trainer", "registry", "inference", "gateway"]
SETTING = re.compile(r"`([A-Z][A-Z0-9_]*(?:__(?:[A-Z0-9_]+|\*))?)`")


def readme(package: str) -> str:
    text = (ROOT / package / "README.md").read_text()
    assert "**Events:**" in text and "**Settings:**" in text, f"{package}/README.md"
    return text


def resolve(model: type[BaseModel], name: str) -> None:
    """``KAFKA__BOOTSTRAP_SERVERS`` -> settings.kafka.bootstrap_servers must exist."""
    head, _, rest = name.partition("__")
    field = model.model_fields.get(head.lower())
    assert field is not None, f"no setting {name} in {model.__name__}"
    if rest and rest != "*":
        nested: Any = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            resolve(nested, rest)


def check_names(text: str, model: type[BaseModel]) -> None:
    for name in SETTING.findall(text):
        if not name.startswith(("LMFORGE_", "OTEL_")):
            resolve(model, name)
    topics = {t.value for t in Topic}
    for topic in re.findall(r"`([a-z]+(?:-[a-z]+)+)`", text):
        assert topic in topics, f"unknown topic {topic}"
    for event_type in re.findall(r"`(lmforge\.[a-z_.]+\.v\d+)`", text):
        assert event_type in PAYLOADS_BY_TYPE, f"unknown event type {event_type}"


@pytest.mark.parametrize("service", SERVICES)
def test_service_readme_matches_the_code(service: str) -> None:
    text = readme(f"services/{service}")
    assert f"`LMFORGE_{service.upper()}_`" in text
    settings_cls = getattr(importlib.import_module(f"lmforge.{service}.settings"), f"{service.capitalize()}Settings")
    assert f"port {settings_cls().http.port}" in text
    check_names(text, settings_cls)
    wiring = (ROOT / "services" / service / "src/lmforge" / service / "app.py").read_text()
    for member in set(re.findall(r"Topic\.([A-Z_]+)", wiring)):
        assert f"`{Topic[member].value}`" in text, f"{service} README does not name {Topic[member].value}"


def test_library_readmes_match_the_code() -> None:
    check_names(readme("libs/common"), ServiceSettings)
    for topic in Topic:
        assert f"`{topic.value}`" in readme("libs/common")
    devstack = readme("libs/devstack")
    servers = importlib.import_module("lmforge.devstack.servers")
    for name in ("TansuBroker", "PostgresCluster", "TritonServer", "S3Server", "RedisServer"):
        assert hasattr(servers, name)
    assert "moto_server" in devstack and "redis-server" in devstack
