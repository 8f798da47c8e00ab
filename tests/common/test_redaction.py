"""Record text never reaches logs, dead-letter error headers or span events.

Every secret below is made at run time, so it can never appear in a traceback's source lines:
finding one in an output means that the output quoted the input.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError

from lmforge.common.db import Database
from lmforge.common.events import Event, InvalidEvent, RawRecordV1, dead_letter_topic, decode_event
from lmforge.common.events.envelope import describe_validation_error
from lmforge.common.kafka import DLQ_ERROR, ConsumerRunner, EventProducer, InboundMessage
from lmforge.common.redaction import (
    MAX_LOG_FIELD_CHARS,
    describe_error,
    format_exception_safely,
    scrub,
)
from lmforge.common.settings import KafkaSettings
from lmforge.common.telemetry import get_logger, setup_logging
from lmforge.devstack.servers import PostgresCluster

from ..helpers import read_topic, wait_until
from .factories import raw_record


def _secret(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


def _hidden(secret: str, output: str) -> bool:
    """No 8 characters in a row of the secret's random part: pydantic, for one, quotes only the
    start and the end of a long input, and a part is a leak too."""
    token = secret.rsplit("-", 1)[1]
    return all(token[i : i + 8] not in output for i in range(len(token) - 7))


class JsonLogs:
    """The JSON lines written by the service logging set-up (``setup_logging``), captured."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == event]


@pytest.fixture
def json_logs() -> Iterator[JsonLogs]:
    """``setup_logging`` as a service runs it, writing to a buffer; everything restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_levels = {name: logging.getLogger(name).level for name in ("aiokafka", "kafka")}
    saved_config = structlog.get_config()
    setup_logging("redaction-tests")
    stream = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        yield JsonLogs(stream)
    finally:
        structlog.contextvars.unbind_contextvars("service")
        structlog.reset_defaults()
        structlog.configure(**saved_config)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


class StrictTicket(BaseModel):
    """A handler's stricter view of a record: its validation error quotes the text by default."""

    text: str = Field(max_length=10)


# -- validation and codec errors ------------------------------------------------------------


def test_validation_error_is_described_by_field_and_reason_never_by_input() -> None:
    secret = _secret("ssn")
    with pytest.raises(ValidationError) as caught:
        StrictTicket.model_validate({"text": f"my number is {secret}"})
    exc = caught.value
    assert not _hidden(secret, str(exc))  # pydantic's own message quotes the input: the leak this guards
    for safe in (describe_validation_error(exc), describe_error(exc), format_exception_safely(exc)):
        assert _hidden(secret, safe)
        assert "text: String should have at most 10 characters" in safe
    assert describe_error(exc).startswith("ValidationError: 1 validation error(s) for StrictTicket")


def test_invalid_cloud_event_names_the_field_and_its_traceback_hides_the_input() -> None:
    secret = _secret("email")
    _, headers = Event(data=raw_record("x1"), source="tests").to_kafka()
    with pytest.raises(InvalidEvent) as caught:
        decode_event(headers, json.dumps({"text": secret, "source": "crm"}).encode(), RawRecordV1)
    exc = caught.value
    assert isinstance(exc.__cause__, ValidationError) and not _hidden(secret, str(exc.__cause__))
    assert _hidden(secret, str(exc))
    assert "record_id: Field required" in str(exc)
    rendered = format_exception_safely(exc)
    assert _hidden(secret, rendered)
    assert "The above exception was the direct cause of the following exception:" in rendered
    assert rendered.rstrip().splitlines()[-1].startswith("InvalidEvent: invalid lmforge.record.raw.v1 payload")


def test_unicode_errors_never_quote_the_bytes() -> None:
    secret = _secret("name")
    value = f'{{"text": "{secret}'.encode() + b"\xff" + b'"}'
    with pytest.raises(UnicodeDecodeError) as caught:
        value.decode("utf-8")
    exc = caught.value
    assert not _hidden(secret, repr(exc))  # repr and args carry the whole input
    position = value.index(0xFF)
    assert (
        describe_error(exc)
        == f"UnicodeDecodeError: 'utf-8' codec can't decode in position {position}: invalid start byte"
    )
    assert "0xff" not in describe_error(exc)
    # The same when the codec's message was pasted into another error (ingest's "not JSON: ...").
    wrapped = InvalidEvent(f"not JSON: {exc}")
    assert "0xff" in str(wrapped) and "0xff" not in describe_error(wrapped)
    with pytest.raises(UnicodeEncodeError) as encoding:
        "é-name".encode("ascii")
    assert "é" not in describe_error(encoding.value)
    assert "can't encode in position 0" in describe_error(encoding.value)


def test_scrub_hides_what_libraries_quote_and_keeps_the_rest() -> None:
    secret = _secret("s")
    quoted = {
        f"[type=string_too_long, input_value='{secret}, input_type=x]', input_type=str]": "[type=string_too_long",
        f"[SQL: INSERT INTO t (text) VALUES (?)]\n[parameters: ('{secret}',)]": "[SQL: INSERT INTO t (text)",
        f"duplicate key\nDETAIL:  Key (text)=({secret}) already exists.": "duplicate key",
        f"invalid input for query argument $2: '{secret}' (expected int)": "query argument $2",
        f'invalid input syntax for type integer: "{secret}"': "invalid input syntax for type integer",
    }
    for message, kept in quoted.items():
        assert _hidden(secret, scrub(message))
        assert kept in scrub(message)
    plain = "cannot digest this record (attempt 3)"
    assert scrub(plain) == plain


# -- databases: real SQLite and PostgreSQL -----------------------------------------------------

_metadata = sa.MetaData()
_tickets = sa.Table(
    "tickets",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("text", sa.Text, nullable=False, unique=True),
    sa.Column("priority", sa.Integer, nullable=False),
)


async def test_failing_insert_never_carries_the_row_in_its_error(database: Database) -> None:
    await database.create_all(_metadata)
    secret = _secret("ticket")
    async with database.sessions.begin() as session:
        await session.execute(_tickets.insert().values(text=secret, priority=1))
    for row in ({"text": secret, "priority": 2}, {"text": f"{secret}-again", "priority": None}):
        with pytest.raises(IntegrityError) as caught:
            async with database.sessions.begin() as session:
                await session.execute(_tickets.insert().values(**row))
        exc = caught.value
        assert "[SQL parameters hidden due to hide_parameters=True]" in str(exc)
        assert _hidden(secret, str(exc)) and _hidden(secret, repr(exc))
        # PostgreSQL's own message (chained below SQLAlchemy's) has a DETAIL line quoting the row.
        assert _hidden(secret, format_exception_safely(exc))
        assert _hidden(secret, describe_error(exc)) and describe_error(exc).startswith("IntegrityError: ")


async def test_postgres_argument_errors_are_described_without_the_value(postgres: PostgresCluster, unique: str) -> None:
    """asyncpg quotes a parameter it cannot encode in its own message, which ``hide_parameters``
    cannot reach: ``describe_error`` and the safe traceback still hide it."""
    database = Database(postgres.create_database(f"t_{unique}"))
    try:
        await database.create_all(_metadata)
        secret = _secret("priority")
        with pytest.raises(DBAPIError) as caught:
            async with database.sessions.begin() as session:
                await session.execute(sa.text("INSERT INTO tickets (text, priority) VALUES ('x', :p)"), {"p": secret})
        exc = caught.value
        assert _hidden(secret, describe_error(exc)) and _hidden(secret, format_exception_safely(exc))
        assert "invalid input for query argument $1: <hidden>" in describe_error(exc)
    finally:
        await database.dispose()


# -- log lines ---------------------------------------------------------------------------------


def test_log_fields_carrying_text_are_hashed_and_the_others_cut(json_logs: JsonLogs) -> None:
    secret = _secret("prompt")
    text = f"please reset the password of {secret}"
    log = get_logger("tests.redaction")
    with pytest.raises(ValidationError) as caught:
        StrictTicket.model_validate({"text": secret})
    log.warning(
        "something happened",
        text=text,
        prompt=secret,
        body=f"upstream answered: {secret}".encode(),
        nested={"value": secret, "count": 3},
        ticket=raw_record("t1", text=text),  # a model is logged field by field
        deep={"a": {"b": {"c": {"d": {"e": secret}}}}},
        many=list(range(1_000)),
        note="x" * 5_000,
        error=repr(caught.value),  # what a careless call site passes
        job_id="job-1",
    )
    logging.getLogger("sqlalchemy.engine").error("[SQL: INSERT]\n[parameters: (%r,)]", secret)

    assert _hidden(secret, json_logs.text)
    line = json_logs.events("something happened")[0]
    assert line["text"] == {"sha256": hashlib.sha256(text.encode()).hexdigest()[:12], "chars": len(text)}
    assert set(line["prompt"]) == {"sha256", "chars"} and "bytes" in line["body"]
    assert set(line["nested"]["value"]) == {"sha256", "chars"} and line["nested"]["count"] == 3
    assert line["ticket"]["text"] == line["text"] and line["ticket"]["source_id"] == "t1"
    assert line["deep"]["a"]["b"]["c"]["d"] == "<dict nested too deeply to log>"
    assert len(line["many"]) == 51 and line["many"][-1] == "…[950 more items]"
    assert line["note"].startswith("x" * MAX_LOG_FIELD_CHARS) and len(line["note"]) < MAX_LOG_FIELD_CHARS + 40
    assert "input_value=<hidden>" in line["error"]
    assert line["job_id"] == "job-1" and line["service"] == "redaction-tests"
    foreign = [entry for entry in json_logs.lines() if entry.get("logger") == "sqlalchemy.engine"]
    assert foreign and "[parameters hidden]" in foreign[0]["event"]


def test_logged_tracebacks_show_frames_without_locals_or_quoted_input(json_logs: JsonLogs) -> None:
    secret = _secret("local")

    def handle_ticket(ticket_text: str) -> None:
        parsed = StrictTicket.model_validate({"text": ticket_text})  # fails, quoting ticket_text
        raise AssertionError(parsed)

    try:
        try:
            handle_ticket(secret)
        except ValidationError as exc:
            raise RuntimeError("could not handle a ticket") from exc
    except RuntimeError:
        get_logger("tests.redaction").exception("handler failed")

    assert _hidden(secret, json_logs.text)
    rendered = json_logs.events("handler failed")[0]["exception"]
    assert "in handle_ticket" in rendered  # the frames are there
    assert "text: String should have at most 10 characters" in rendered  # and the reasons
    assert rendered.rstrip().endswith("RuntimeError: could not handle a ticket")


# -- the consumer runner on the real broker: dead letters, logs and spans ----------------------


async def test_dead_letters_logs_and_spans_never_carry_the_record_text(
    kafka_settings: KafkaSettings,
    database: Database,
    span_exporter: InMemorySpanExporter,
    json_logs: JsonLogs,
    unique: str,
) -> None:
    """Four poison records, each failing in a way whose default message quotes the record: a
    handler's validation error, a value that is not UTF-8, a failing INSERT, a CloudEvent whose
    payload is invalid. Each reaches the DLQ with a reason, and no secret appears anywhere else."""
    topic, group = f"redact-{unique}", f"g-{unique}"
    settings = kafka_settings.model_copy(update={"max_attempts": 2})
    await database.create_all(_metadata)
    secrets = {kind: _secret(kind) for kind in ("validation", "utf8", "insert", "payload")}
    handled: list[str] = []

    async def handler(msg: InboundMessage) -> None:
        if msg.header("ce_type") is None:
            json.loads((msg.value or b"").decode("utf-8"))  # strict: not UTF-8 raises
            return
        record = msg.event(RawRecordV1).data
        if record.source_id == "validation":
            StrictTicket.model_validate({"text": record.text})
        elif record.source_id == "insert":
            async with database.sessions.begin() as session:
                await session.execute(_tickets.insert().values(text=record.text, priority=None))
        handled.append(record.source_id)

    _, ce_headers = Event(data=raw_record("payload"), source="tests").to_kafka()
    runner = ConsumerRunner(settings, group_id=group, topics=[topic], handler=handler)
    await runner.start()
    task = runner.run_in_background()
    try:
        async with EventProducer(settings, source="tests") as producer:
            await producer.publish(topic, raw_record("validation", text=f"call me: {secrets['validation']}"), key="k")
            await producer.send_raw(
                topic, f'{{"text": "{secrets["utf8"]}\xff"}}'.encode("latin-1"), key=b"k", headers=[]
            )
            await producer.publish(topic, raw_record("insert", text=f"my card {secrets['insert']}"), key="k")
            await producer.send_raw(
                topic, json.dumps({"text": secrets["payload"]}).encode(), key=b"k", headers=ce_headers
            )
            await producer.publish(topic, raw_record("after"), key="k")

            async def after_handled() -> bool:
                return "after" in handled

            await wait_until(after_handled, timeout=60)
    finally:
        runner.request_stop()
        await task
        await runner.stop()

    letters = await read_topic(settings.bootstrap_servers, dead_letter_topic(topic), expected=4)
    assert len(letters) == 4
    errors = {}
    for letter in letters:
        headers = {k: v.decode("utf-8", "replace") for k, v in letter.headers}
        dlq_headers = " ".join(v for k, v in headers.items() if k.startswith("dlq."))
        for secret in secrets.values():
            assert _hidden(secret, dlq_headers)
        errors[headers["dlq.error.type"]] = headers[DLQ_ERROR]
    assert errors["ValidationError"].endswith("text: String should have at most 10 characters")
    assert errors["UnicodeDecodeError"].startswith("UnicodeDecodeError: 'utf-8' codec can't decode in position")
    assert errors["IntegrityError"].startswith("IntegrityError: ")
    assert "record_id: Field required" in errors["InvalidEvent"]

    # Logs: the retries and the dead letters were logged, with reasons and stacks, and no text.
    for secret in secrets.values():
        assert _hidden(secret, json_logs.text)
    dead = json_logs.events("dead-lettering record")
    assert len(dead) == 4 and all(line["stack"] and line["error"] for line in dead)
    assert len(json_logs.events("handler failed, retrying")) == 3

    # Spans: the recorded exceptions and the status descriptions.
    spans = [s for s in span_exporter.get_finished_spans() if s.name == f"{topic} process"]
    recorded = [str(event.attributes) for s in spans for event in s.events if event.name == "exception"]
    assert len(recorded) == 7  # two attempts for three records, one for the invalid event
    descriptions = [s.status.description or "" for s in spans]
    for secret in secrets.values():
        assert all(_hidden(secret, r) for r in recorded)
        assert all(_hidden(secret, d) for d in descriptions)
