"""The embedded stack: Tansu, a CPU Triton, and the six services as processes on loopback.

Each service gets its own port, its own database (SQLite files by default, or databases in one
throwaway PostgreSQL cluster), the shared local artifact folder, and its logs in
``<workdir>/logs/<service>.log``. ``Stack.start()`` returns when every service answers ``/readyz``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .servers import PostgresCluster, ServerError, TansuBroker, TritonServer, free_port, kill_process_group

SERVICES = ("ingest", "preprocess", "trainer", "registry", "inference", "gateway")


@dataclass
class ServiceProcess:
    name: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    workdir: Path
    postgres: bool = False
    otlp_endpoint: str | None = None
    admin_key: str = field(default_factory=lambda: f"lmf_admin_{secrets.token_urlsafe(24)}")
    # The credential the services' calls to each other carry (LMFORGE_<SERVICE>_INTERNAL__TOKEN).
    internal_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    upstream_topic: str = "upstream.records"
    extra_env: dict[str, str] = field(default_factory=dict)
    # A subset of the services (tests of the data path need no Triton, trainer or inference).
    only: tuple[str, ...] = SERVICES
    # Where the trainer keeps converted base models (SmolLM2 from its GGUF file, about 20 s once):
    # shared by every stack started from the same directory, as the trainer tests share it.
    model_cache_dir: Path = Path("var/model-cache")

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.model_cache_dir = self.model_cache_dir.resolve()
        self.broker: TansuBroker | None = None
        self.triton: TritonServer | None = None
        self.pg: PostgresCluster | None = None
        unknown = set(self.only) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services: {', '.join(sorted(unknown))}")
        self.services = {
            name: ServiceProcess(name, free_port(), self.workdir / "logs" / f"{name}.log")
            for name in SERVICES
            if name in self.only
        }

    @property
    def gateway_url(self) -> str:
        return self.services["gateway"].url

    def url(self, service: str) -> str:
        return self.services[service].url

    def _database_url(self, service: str) -> str:
        if self.pg is not None:
            return self.pg.create_database(f"lmforge_{service}")
        return f"sqlite+aiosqlite:///{self.workdir / 'db' / f'{service}.db'}"

    def _env(self, service: str) -> dict[str, str]:
        assert self.broker is not None
        p = f"LMFORGE_{service.upper()}_"
        env = dict(os.environ)
        env.update(
            {
                f"{p}HTTP__PORT": str(self.services[service].port),
                f"{p}KAFKA__BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
                # Tansu answers the first JoinGroup after session_timeout/2 (docs/platform.md).
                f"{p}KAFKA__SESSION_TIMEOUT_MS": "6000",
                f"{p}KAFKA__HEARTBEAT_INTERVAL_MS": "500",
                f"{p}KAFKA__POLL_TIMEOUT_MS": "200",
                f"{p}DATABASE__URL": self._database_url(service),
                f"{p}ARTIFACTS__URL": str(self.workdir / "artifacts"),
                f"{p}INTERNAL__TOKEN": self.internal_token,
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            }
        )
        if self.otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp_endpoint
        if service == "ingest":
            env[f"{p}UPSTREAM_TOPICS"] = f'["{self.upstream_topic}"]'
        if service == "trainer":
            env[f"{p}WORK_DIR"] = str(self.workdir / "trainer-work")
            env[f"{p}MODEL_CACHE_DIR"] = str(self.model_cache_dir)
            if "registry" in self.services:
                env[f"{p}REGISTRY_URL"] = self.url("registry")
        if service == "inference":
            assert self.triton is not None
            env[f"{p}TRITON_GRPC_URL"] = f"127.0.0.1:{self.triton.grpc_port}"
            env[f"{p}MODEL_REPOSITORY"] = str(self.triton.model_repository)
            if "registry" in self.services:
                env[f"{p}REGISTRY_URL"] = self.url("registry")
            env[f"{p}RECONCILE_INTERVAL_S"] = "10"
        if service == "gateway":
            env[f"{p}BOOTSTRAP_ADMIN_KEY"] = self.admin_key
            for other in self.services:
                if other != "gateway":
                    env[f"{p}{other.upper()}_URL"] = self.url(other)
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 180.0) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            self.broker = TansuBroker(self.workdir / "kafka")
            self.broker.start()
            if self.postgres:
                self.pg = PostgresCluster(self.workdir / "postgres")
                self.pg.start()
            if "inference" in self.services:
                self.triton = TritonServer(
                    self.workdir / "triton-server", self.workdir / "triton-models", otlp_endpoint=self.otlp_endpoint
                )
                self.triton.start()
            for name in self.services:
                self.start_service(name)
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def start_service(self, name: str) -> None:
        svc = self.services[name]
        log = open(svc.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            svc.proc = subprocess.Popen(
                [sys.executable, "-P", "-m", f"lmforge.{name}"],
                cwd=self.workdir,
                env=self._env(name),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def stop_service(self, name: str, *, grace: float = 15, sig: int = signal.SIGTERM) -> None:
        svc = self.services[name]
        if svc.proc is not None:
            kill_process_group(svc.proc, grace=grace, sig=sig)
            svc.proc = None

    def kill_service(self, name: str) -> None:
        """``kill -9`` a service: no drain, no commit, no clean-up (a crash, as chaos tests want)."""
        self.stop_service(name, grace=0, sig=signal.SIGKILL)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(self.services)
        while pending:
            for name in list(pending):
                svc = self.services[name]
                if svc.proc is not None and svc.proc.poll() is not None:
                    raise ServerError(f"{name} exited with {svc.proc.returncode}\n{_tail(svc.log_path)}")
                try:
                    with urllib.request.urlopen(f"{svc.url}/readyz", timeout=2) as resp:
                        if resp.status == 200:
                            pending.remove(name)
                except (urllib.error.URLError, OSError):
                    pass
            if pending and time.monotonic() > deadline:
                raise ServerError(
                    f"not ready after {timeout_s:.0f}s: {', '.join(pending)}\n"
                    + "\n".join(_tail(self.services[n].log_path, 15) for n in pending)
                )
            time.sleep(0.3)

    def stop(self) -> None:
        for name in reversed(list(self.services)):
            self.stop_service(name)
        for server in (self.triton, self.pg, self.broker):
            if server is not None:
                server.stop()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> list[tuple[str, str, str]]:
        rows = [("kafka (tansu)", self.broker.bootstrap_servers if self.broker else "-", str(self.workdir / "kafka"))]
        if self.triton:
            rows.append(("triton", f"http://{self.triton.http_url}", str(self.triton.log_path)))
        if self.pg:
            rows.append(("postgres", self.pg.url(), str(self.pg.log_path)))
        rows += [(s.name, s.url, str(s.log_path)) for s in self.services.values()]
        return rows


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"--- {path}: no log ---"
