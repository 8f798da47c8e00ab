"""docker-compose.yml and the Dockerfiles, checked statically (no Docker engine on these machines):
the YAML parses, every referenced file exists, every service is healthchecked and only starts
after what it depends on is healthy, and every image version comes from .env."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ["ingest", "preprocess", "trainer", "registry", "inference", "gateway"]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_every_referenced_file_exists() -> None:
    for name, svc in compose()["services"].items():
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"


def test_dockerfiles_copy_only_what_exists_and_run_the_service() -> None:
    for name in SERVICES:
        text = (ROOT / "services" / name / "Dockerfile").read_text()
        for src in re.findall(r"^COPY (\S+) ", text, flags=re.M):
            assert (ROOT / src).exists(), f"{name}: COPY {src}"
        assert f'CMD ["python", "-m", "lmforge.{name}"]' in text
        assert "USER " in text and "HEALTHCHECK" in text


def test_startup_order_healthchecks_and_limits() -> None:
    services = compose()["services"]
    assert set(SERVICES) <= set(services)
    for name, svc in services.items():
        assert "mem_limit" in svc, f"{name} has no memory limit"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                has_check = "healthcheck" in services[dep] or "Dockerfile" in services[dep].get("build", {}).get(
                    "dockerfile", ""
                )
                assert has_check, f"{name} waits for {dep}, which has no healthcheck"
    for name in SERVICES:
        env = services[name]["environment"]
        assert env[f"LMFORGE_{name.upper()}_KAFKA__ENABLE_IDEMPOTENCE"] == "true"  # real Kafka: idempotent producers
        assert env[f"LMFORGE_{name.upper()}_DATABASE__URL"].endswith(f"/{name}")  # each service owns its database


def test_image_versions_are_pinned_in_env() -> None:
    env = dict(
        line.split("=", 1)
        for line in (ROOT / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    for name, svc in compose()["services"].items():
        image = svc.get("image")
        if image:
            var = re.fullmatch(r"\$\{(\w+)\}", image)
            assert var and var.group(1) in env and ":" in env[var.group(1)], f"{name}: {image}"
    for sql_db in re.findall(r"CREATE DATABASE (\w+);", (ROOT / "deploy/postgres/init.sql").read_text()):
        assert sql_db in SERVICES


def test_kubernetes_manifests_are_consistent() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/lmforge.yaml").read_text()))
    kinds: dict[str, dict[str, dict]] = {}  # type: ignore[type-arg]
    for d in docs:
        kinds.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    assert set(SERVICES) <= set(kinds["Deployment"]) and set(SERVICES) <= set(kinds["Service"])
    for name in SERVICES:
        pod = kinds["Deployment"][name]["spec"]["template"]["spec"]
        main = pod["containers"][0]
        assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
        port_names = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
        for port in kinds["Service"][name]["spec"]["ports"]:
            assert port["targetPort"] in port_names
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in {v["name"] for v in pod.get("volumes", [])}
    for name, hpa in kinds.get("HorizontalPodAutoscaler", {}).items():
        assert hpa["spec"]["scaleTargetRef"]["name"] in kinds["Deployment"], name
    assert {"gateway", "ingest"} <= set(kinds["HorizontalPodAutoscaler"])  # the stateless front doors scale
