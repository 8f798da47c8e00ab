"""schemathesis against the gateway and ingest, as the test suite starts them: no 5xx, no contract
violation.

The whole stack runs as processes (Tansu, Triton, the six services on SQLite). schemathesis reads
each service's ``/openapi.json`` and sends generated requests, valid and invalid, through the real
services behind it; every default check runs on every answer: not a server error, status code,
content type, response headers and body against the declared schema, negative data rejected,
positive data accepted, authentication enforced (it repeats requests without and with a wrong key).

One guard: a generated, valid training request that names a dataset version that exists would
really train a model with generated hyperparameters (up to 100,000 steps). Such cases are left out
with ``assume``; every other training request (no such dataset: 404; invalid: 422) is sent.

Ingest is internal: its document and every call carry the stack's internal credential, and its
OpenAPI declares that credential, so the authentication checks run against it too. The gateway's
request rate per key is raised for this stack: every generated case uses the one admin key, and
the contract, not the rate limit (tested in ``tests/gateway``), is what is checked here.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

from lmforge.common.names import url_path
from lmforge.devstack.servers import make_workdir
from lmforge.devstack.stack import Stack

pytestmark = pytest.mark.slow

EXAMPLES = 25  # generated cases per operation, on top of schemathesis's coverage cases
CASES: Counter[tuple[str, str, int]] = Counter()  # (service, operation, status) -> cases


@schemathesis.serializer("application/x-ndjson")
def _jsonl(ctx: Any, value: Any) -> bytes:
    """JSON Lines: one generated record per line (declared as an array of records)."""
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()


_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
_RECORD = st.fixed_dictionaries(
    {
        "source": st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True),
        "source_id": _TEXT.filter(str.strip),
        "text": _TEXT.filter(str.strip),
    },
    optional={"label": _TEXT, "metadata": st.dictionaries(_TEXT, st.integers() | _TEXT, max_size=5)},
)
# The multipart upload's ``file`` part is JSONL (its ``encoding.contentType``); a binary format in
# JSON Schema cannot say what the bytes hold, so the part's content comes from this strategy.
schemathesis.openapi.media_type(
    "application/jsonl",
    st.lists(_RECORD, min_size=1, max_size=5).map(lambda rs: "".join(json.dumps(r) + "\n" for r in rs).encode()),
)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schema renames the running node through ``_nodeid``, which pytest
    9.2 no longer has (it keeps ``_id``); the attribute it reads and writes is given back here."""
    request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Its own folder, not pytest's numbered one: another pytest session may prune those.
    workdir = make_workdir("lmforge-contract-")
    try:
        extra_env = {"LMFORGE_GATEWAY_REQUESTS_PER_MINUTE": "1000000"}
        with Stack(workdir, postgres=True, extra_env=extra_env) as running:
            yield running
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _report()


# How invalid requests may be refused. schemathesis's default list, with 413 (more records than
# the declared ``maxItems``, or a body over the byte limit: both refused as too large, as declared)
# and without 5xx (a server error is never a refusal).
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}})


@pytest.fixture(scope="module")
def gateway(stack: Stack) -> Any:
    return schemathesis.openapi.from_url(f"{stack.gateway_url}/openapi.json", config=CONFIG)


@pytest.fixture(scope="module")
def ingest(stack: Stack) -> Any:
    return schemathesis.openapi.from_url(f"{stack.url('ingest')}/openapi.json", config=CONFIG, headers=_internal(stack))


gateway_schema = schemathesis.pytest.from_fixture("gateway")
ingest_schema = schemathesis.pytest.from_fixture("ingest")

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


def _internal(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.internal_token}"}


def _dataset_version_exists(stack: Stack, body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    name, version = body.get("dataset"), body.get("dataset_version")
    if not isinstance(name, str) or not name or name in (".", "..") or not isinstance(version, int):
        return False
    resp = httpx.get(
        stack.url("preprocess") + url_path("datasets", name, "versions"), headers=_internal(stack), timeout=10
    )
    return resp.status_code == 200 and any(v["version"] == version for v in resp.json())


@gateway_schema.parametrize()
@FUZZ
def test_gateway_contract(case: schemathesis.Case, stack: Stack) -> None:
    if case.operation.method.upper() == "POST" and case.operation.path == "/v1/training-jobs":
        assume(not _dataset_version_exists(stack, case.body))
    response = case.call_and_validate(headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=60)
    CASES["gateway", case.operation.label, response.status_code] += 1


@ingest_schema.parametrize()
@FUZZ
def test_ingest_contract(case: schemathesis.Case, stack: Stack) -> None:
    response = case.call_and_validate(headers=_internal(stack), timeout=60)
    CASES["ingest", case.operation.label, response.status_code] += 1


def _report() -> None:
    """The figures: operations, cases and status codes per service (shown with ``-s`` or on failure)."""
    for service in ("gateway", "ingest"):
        rows = {k: n for k, n in CASES.items() if k[0] == service}
        operations = sorted({op for _, op, _ in rows})
        print(f"\nschemathesis {service}: {len(operations)} operations, {sum(rows.values())} cases")
        for op in operations:
            statuses = {s: n for (_, o, s), n in sorted(rows.items()) if o == op}
            print(f"  {op}: {statuses}")
