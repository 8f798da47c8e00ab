"""docker-compose.yml, the Dockerfile and the Kubernetes manifests, checked statically (no Docker
engine on these machines): the YAML parses, every referenced file exists, every service is built
from the one Dockerfile with its SERVICE arg, runs as uid 10001 on volumes it can write, is
healthchecked and only starts after what it depends on is ready, every image version comes from
.env, and compose refuses to start without an admin key."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ["ingest", "preprocess", "trainer", "registry", "inference", "gateway"]
UID = "10001"


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def dotenv() -> dict[str, str]:
    lines = (ROOT / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))


def dockerfile_stages(text: str) -> list[str]:
    """The Dockerfile's stages, each as its text (instructions joined across line continuations)."""
    joined = re.sub(r"\\\n", " ", text)
    return re.split(r"^FROM ", joined, flags=re.M)[1:]


def k8s() -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for d in yaml.safe_load_all((ROOT / "deploy/k8s/lmforge.yaml").read_text()):
        kinds.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return kinds


def test_every_referenced_file_exists() -> None:
    for name, svc in compose()["services"].items():
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"


def test_one_dockerfile_builds_every_service() -> None:
    services = compose()["services"]
    for name in SERVICES:
        build = services[name]["build"]
        assert (build["context"], build["dockerfile"]) == (".", "Dockerfile"), name
        assert build["args"]["SERVICE"] == name
    assert not list(ROOT.glob("services/*/Dockerfile")), "per-service Dockerfiles are gone: one recipe for all"
    for name in SERVICES:  # what `python -m lmforge.$SERVICE` and the healthcheck import exist
        assert (ROOT / "services" / name / "src/lmforge" / name / "__main__.py").is_file()
        assert hasattr(importlib.import_module(f"lmforge.{name}.settings"), f"{name.capitalize()}Settings")


def test_dockerfile_is_multi_stage_non_root_and_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    build, runtime = dockerfile_stages(text)
    assert build.startswith("${PYTHON_IMAGE} AS build") and runtime.startswith("${PYTHON_IMAGE} AS runtime")
    for stage in (build, runtime):
        assert re.search(r"^ARG SERVICE$", stage, flags=re.M)
    # Sources and compilers stay in the build stage; the runtime stage takes only the virtualenv.
    assert "pip install" in build and "pip install" not in runtime
    assert re.search(r"^COPY --from=build /opt/lmforge /opt/lmforge$", runtime, flags=re.M)
    for src in re.findall(r"^COPY (?!--from)(\S+) ", text, flags=re.M):
        for name in SERVICES:
            path = src.replace("${SERVICE}", name)
            assert (ROOT / path).exists(), f"COPY {path}"
    assert re.search(rf"^USER {UID}:{UID}$", runtime, flags=re.M)
    assert re.search(rf"useradd .*--uid {UID}", runtime)
    # The folders the service writes exist in the image and belong to the service user, so a
    # fresh named volume mounted there inherits that ownership.
    chown = re.search(rf"chown -R {UID}:{UID} (.+)", runtime)
    assert chown and {"/artifacts", "/models", "/app/var"} <= set(chown.group(1).split())
    assert runtime.index("chown") < runtime.index("USER ")
    assert 'CMD ["/bin/sh", "-c", "exec python -m \\"lmforge.${LMFORGE_SERVICE}\\""]' in runtime
    assert "ENV" in runtime and "LMFORGE_SERVICE=${SERVICE}" in runtime
    assert "HEALTHCHECK" in runtime and (ROOT / "deploy/docker/healthcheck.py").is_file()


def test_volumes_are_writable_by_the_service_user() -> None:
    services = compose()["services"]
    init = services["volume-init"]
    assert init["user"] == "0:0" and init["command"][:3] == ["chown", "-R", f"{UID}:{UID}"]
    named = set(compose()["volumes"])
    mounted_by_init = {v.split(":")[0] for v in init["volumes"]}
    for name in SERVICES:  # third-party images (postgres, ...) own their volumes themselves
        svc = services[name]
        for volume in svc.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source not in named or mode == ["ro"]:
                continue
            assert source in mounted_by_init, f"{name} writes {source}, which volume-init does not own"
            assert target in init["command"], f"{name} mounts {source} at {target}"
            cond = svc["depends_on"]["volume-init"]["condition"]
            assert cond == "service_completed_successfully", name
    assert services["triton"]["volumes"] == ["triton-models:/models:ro"]  # Triton only reads


def test_startup_order_healthchecks_and_limits() -> None:
    services = compose()["services"]
    assert set(SERVICES) <= set(services)
    for name, svc in services.items():
        assert "mem_limit" in svc, f"{name} has no memory limit"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                # Service images carry the Dockerfile's HEALTHCHECK; the others declare one.
                assert "healthcheck" in services[dep] or dep in SERVICES, f"{name} waits for {dep}, unchecked"
    for name in SERVICES:
        env = services[name]["environment"]
        assert env[f"LMFORGE_{name.upper()}_KAFKA__ENABLE_IDEMPOTENCE"] == "true"  # real Kafka: idempotent producers
        assert env[f"LMFORGE_{name.upper()}_DATABASE__URL"].endswith(f"/{name}")  # each service owns its database


def test_image_versions_are_pinned_in_env() -> None:
    env = dotenv()

    def pinned(ref: str, where: str) -> None:
        var = re.fullmatch(r"\$\{(\w+)\}", ref)
        assert var and var.group(1) in env and ":" in env[var.group(1)], f"{where}: {ref}"

    for name, svc in compose()["services"].items():
        if "image" in svc:
            pinned(svc["image"], name)
        for arg, value in svc.get("build", {}).get("args", {}).items():
            if arg.endswith("_IMAGE"):
                pinned(value, f"{name} build arg {arg}")
    assert re.search(r"^ARG PYTHON_IMAGE=\S+:\S+", (ROOT / "Dockerfile").read_text(), flags=re.M)
    for sql_db in re.findall(r"CREATE DATABASE (\w+);", (ROOT / "deploy/postgres/init.sql").read_text()):
        assert sql_db in SERVICES


def test_compose_refuses_to_start_without_an_admin_key() -> None:
    env = compose()["services"]["gateway"]["environment"]
    # ${VAR:?message}: compose stops with the message when VAR is unset or empty.
    assert re.fullmatch(r"\$\{LMFORGE_ADMIN_KEY:\?[^}]+\}", env["LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY"])
    assert not [k for k in dotenv() if "ADMIN_KEY" in k], ".env must not carry a working admin key"
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"ADMIN_KEY:-", text), "no fallback default for the admin key"


def test_kubernetes_manifests_are_consistent() -> None:
    kinds = k8s()
    assert set(SERVICES) <= set(kinds["Deployment"]) and set(SERVICES) <= set(kinds["Service"])
    for name in SERVICES:
        pod = kinds["Deployment"][name]["spec"]["template"]["spec"]
        main = pod["containers"][0]
        assert main["image"].startswith(f"lmforge/{name}:")
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


def test_kubernetes_pods_run_as_10001_with_writable_volumes_and_s3_options() -> None:
    kinds = k8s()
    for name in SERVICES:
        pod = kinds["Deployment"][name]["spec"]["template"]["spec"]
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert (ctx["runAsUser"], ctx["runAsGroup"], ctx["fsGroup"]) == (10001, 10001, 10001), name
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        prefix = f"LMFORGE_{name.upper()}_"
        assert env[f"{prefix}ARTIFACTS__URL"]["value"].startswith("s3://")
        ref = env[f"{prefix}ARTIFACTS__STORAGE_OPTIONS"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "lmforge-artifacts" and ref["optional"] is True
    admin = {e["name"]: e for e in kinds["Deployment"]["gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "secretKeyRef" in admin["LMFORGE_GATEWAY_BOOTSTRAP_ADMIN_KEY"]["valueFrom"]


def test_compose_refuses_to_start_without_an_internal_credential() -> None:
    services = compose()["services"]
    for name in SERVICES:
        value = services[name]["environment"][f"LMFORGE_{name.upper()}_INTERNAL__TOKEN"]
        assert re.fullmatch(r"\$\{LMFORGE_INTERNAL_TOKEN:\?[^}]+\}", value), name
    assert not [k for k in dotenv() if "INTERNAL" in k], ".env must not carry a working internal credential"
    assert not re.search(r"INTERNAL_TOKEN:-", (ROOT / "docker-compose.yml").read_text()), "no fallback default"


def test_kubernetes_services_share_the_internal_credential_and_the_gateways_redis() -> None:
    kinds = k8s()
    for name in SERVICES:
        env = {e["name"]: e for e in kinds["Deployment"][name]["spec"]["template"]["spec"]["containers"][0]["env"]}
        ref = env[f"LMFORGE_{name.upper()}_INTERNAL__TOKEN"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("lmforge-internal", "token") and not ref.get("optional"), name
    gateway = kinds["Deployment"]["gateway"]
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    # Several replicas (and an autoscaler): their rate limits must be counted in one place.
    assert gateway["spec"]["replicas"] > 1 and "gateway" in kinds["HorizontalPodAutoscaler"]
    ref = env["LMFORGE_GATEWAY_RATE_LIMIT_STORAGE_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("lmforge-gateway-redis", "url")
