"""Session fixtures: real servers (Tansu, PostgreSQL, Triton, S3, Redis) started by the project itself."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lmforge.common.db import Database
from lmforge.common.settings import KafkaSettings
from lmforge.common.telemetry import setup_tracing
from lmforge.devstack.servers import (
    PostgresCluster,
    RedisServer,
    S3Server,
    TansuBroker,
    TritonServer,
    make_workdir,
)


@pytest.fixture(scope="session")
def server_workdir() -> Iterator[Path]:
    path = make_workdir("lmforge-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Every span of the test process, collected in memory (installed once, globally)."""
    exporter = InMemorySpanExporter()
    setup_tracing("lmforge-tests", extra_processors=[SimpleSpanProcessor(exporter)])
    return exporter


@pytest.fixture(scope="session")
def kafka_broker(server_workdir: Path) -> Iterator[TansuBroker]:
    with TansuBroker(server_workdir / "tansu") as broker:
        yield broker


@pytest.fixture(scope="session")
def postgres(server_workdir: Path) -> Iterator[PostgresCluster]:
    with PostgresCluster(server_workdir / "postgres") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def triton(server_workdir: Path) -> Iterator[TritonServer]:
    with TritonServer(server_workdir / "triton", server_workdir / "triton-models") as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(server_workdir: Path) -> Iterator[S3Server]:
    """An S3-compatible endpoint (moto_server); each test makes its own bucket with ``create_bucket``."""
    with S3Server(server_workdir / "s3") as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(server_workdir: Path) -> Iterator[RedisServer]:
    with RedisServer(server_workdir / "redis") as server:
        yield server


@pytest.fixture
def kafka_settings(kafka_broker: TansuBroker) -> KafkaSettings:
    """Settings for the real broker, tuned for fast tests (short polls, short backoff)."""
    return KafkaSettings(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        poll_timeout_ms=100,
        retry_backoff_initial_s=0.02,
        retry_backoff_max_s=0.1,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
        topic_partitions=2,
    )


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> str:
    """A fresh, empty database per test: on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/test.db"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.create_database(f"t_{unique}")


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    yield db
    await db.dispose()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that collected nothing is a failure, never a silent success (no exit code 5)."""
    if session.testscollected == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
