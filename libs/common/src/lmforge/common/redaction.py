"""Keep record text and personal data out of logs, dead-letter headers and span events.

Records carry user text (support tickets, chat logs, prompts). Errors and log fields are read by
operators and shipped to log stores with other retention rules, so anything that may quote a
record is hidden, hashed or cut here, in one place (docs/security.md, "Personal data in logs and
dead letters"):

- ``describe_error(exc)``: one line naming the error type and the reason, never the input.
  A pydantic ``ValidationError`` becomes ``field.path: reason``; a ``UnicodeError`` keeps the
  codec, position and reason but not the bytes; every message is scrubbed and cut.
- ``format_exception_safely(exc)``: a traceback with frames and safe messages only (each
  exception of the chain through ``describe_error``), never local variables.
- ``redact_log_fields``: a structlog processor. Fields named in ``SENSITIVE_LOG_KEYS`` become a
  fingerprint (``{"sha256": <12 hex>, "chars": n}``), every other string is scrubbed and cut to
  ``MAX_LOG_FIELD_CHARS`` (tracebacks to ``MAX_TRACEBACK_CHARS``).
- ``scrub(text)``: removes the known places where libraries quote input into messages: pydantic's
  ``input_value=...``, SQLAlchemy's ``[parameters: ...]``, PostgreSQL's ``DETAIL:`` lines (the
  failing row, the duplicate key), asyncpg's ``invalid input for query argument $n: <value>``,
  PostgreSQL's ``invalid input syntax for type ...: "<value>"`` and the byte or character a
  Unicode codec could not handle.

SQL parameters are also hidden at the source: engines are created with ``hide_parameters=True``
(``lmforge.common.db.engine``).
"""

from __future__ import annotations

import hashlib
import re
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any

from pydantic import BaseModel, ValidationError

# Log fields whose values are, or may quote, record text or a user's words: never logged as they
# are, only as a fingerprint (so two lines about the same text can still be matched).
SENSITIVE_LOG_KEYS: frozenset[str] = frozenset(
    {
        "body",
        "completion",
        "completions",
        "content",
        "input",
        "messages",
        "output",
        "payload",
        "prompt",
        "prompts",
        "record",
        "records",
        "stderr",
        "stdout",
        "text",
        "value",
    }
)
MAX_LOG_FIELD_CHARS = 500
MAX_TRACEBACK_CHARS = 8_000
MAX_ERROR_CHARS = 1_000
# Fields holding a rendered traceback: longer, kept from the end, scrubbed like everything else.
_TRACEBACK_KEYS = frozenset({"exception", "stack"})
_MAX_DEPTH = 4
_MAX_ITEMS = 50
_HIDDEN = "<hidden>"
_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"

_SCRUBBERS: tuple[tuple[re.Pattern[str], str], ...] = (
    # pydantic: "[type=int_parsing, input_value='the record text', input_type=str]". Greedy to the
    # last input_type on the line, so an input that itself contains ", input_type=" is still hidden.
    (re.compile(r"input_value=.*, input_type=(\w+)\]"), rf"input_value={_HIDDEN}, input_type=\1]"),
    (re.compile(r"input_value=.*$", re.MULTILINE), f"input_value={_HIDDEN}"),
    # SQLAlchemy without hide_parameters: "[parameters: ('the record text', ...)]".
    (re.compile(r"\[parameters: .*$", re.MULTILINE), "[parameters hidden]"),
    # PostgreSQL: "DETAIL:  Failing row contains (...)", "DETAIL:  Key (text)=(...) already exists."
    (re.compile(r"DETAIL:.*$", re.MULTILINE), f"DETAIL: {_HIDDEN}"),
    # asyncpg, before the statement runs: "invalid input for query argument $2: 'text' (...)".
    (re.compile(r"(invalid input for query argument \$\d+):.*$", re.MULTILINE), rf"\1: {_HIDDEN}"),
    # PostgreSQL casts: 'invalid input syntax for type integer: "text"'.
    (re.compile(r"(invalid input (?:syntax|value) for (?:type )?[\w .]+): .*$", re.MULTILINE), rf"\1: {_HIDDEN}"),
    # Codec errors: "can't decode byte 0xff in position 3", "can't encode character '\xe9' in ...".
    (re.compile(r"can't (decode|encode|translate) (?:bytes?|characters?) .*? in position"), r"can't \1 in position"),
)


def scrub(text: str) -> str:
    """``text`` with the input that libraries quote into error messages replaced by ``<hidden>``."""
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    return text


def cut(text: str, limit: int) -> str:
    """At most ``limit`` characters (plus a note of how many were left out)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more chars]"


def keep_end(text: str, limit: int) -> str:
    """The last ``limit`` characters: for a traceback, whose end says what went wrong."""
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} chars before]…{text[-limit:]}"


def fingerprint(value: Any) -> dict[str, Any]:
    """What may be logged of a sensitive value: a short hash and its size, never the value."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return {"sha256": hashlib.sha256(data).hexdigest()[:12], "bytes": len(data)}
    text = value if isinstance(value, str) else repr(value)
    return {"sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12], "chars": len(text)}


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """The first few errors as ``field.path: reason``, for a 4xx or a dead letter's reason.

    Never the input: pydantic's own ``str()`` quotes the offending value (``input_value=``).
    Location parts can be keys from the input, so each is cut; reasons are scrubbed and cut.
    """
    parts = []
    errors = exc.errors(include_url=False, include_input=False)
    for err in errors[:limit]:
        loc = ".".join(cut(str(p), 64) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {cut(scrub(err['msg']), 200)}")
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


def _message(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return f"{exc.error_count()} validation error(s) for {exc.title}: {describe_validation_error(exc)}"
    if isinstance(exc, UnicodeDecodeError | UnicodeEncodeError | UnicodeTranslateError):
        # str() names the offending byte or character; repr() and args carry the whole input.
        encoding = getattr(exc, "encoding", "unicode")
        verb = {UnicodeDecodeError: "decode", UnicodeEncodeError: "encode"}.get(type(exc), "translate")
        where = f"{exc.start}" if exc.end - exc.start <= 1 else f"{exc.start}-{exc.end - 1}"
        return f"'{encoding}' codec can't {verb} in position {where}: {exc.reason}"
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break error reporting
        return "<unprintable message>"


def describe_error(exc: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """``Type: reason`` on which a log line, a span or a dead letter may be built safely."""
    return cut(scrub(f"{type(exc).__name__}: {_message(exc)}"), limit)


def format_exception_safely(exc: BaseException, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """A traceback like Python's, chain included, with every message through ``describe_error``.

    Frames show file, line, function and source line; local variables are never rendered.
    """
    # Outermost first; each entry carries the sentence that links it to the one before it.
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    out: list[str] = []
    for error, link in reversed(chain):  # the root cause first, as Python prints it
        if error.__traceback__ is not None:
            out.append("Traceback (most recent call last):\n")
            out.extend(traceback.format_tb(error.__traceback__))
        out.append(f"{describe_error(error)}\n")
        if link:
            out.append(f"\n{link}\n\n")
    return keep_end("".join(out), limit)


def _bounded(value: Any, limit: int, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return cut(scrub(value), limit)
    if isinstance(value, bytes | bytearray | memoryview):
        return fingerprint(value)  # raw bytes are payloads: never logged
    if isinstance(value, BaseException):
        return describe_error(value, limit)
    if isinstance(value, BaseModel):  # an event or a record: its fields meet the denylist
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping | list | tuple | set | frozenset) and depth >= _MAX_DEPTH:
        return f"<{type(value).__name__} nested too deeply to log>"
    if isinstance(value, Mapping):
        fields = {str(k): _redact_field(str(k), v, limit, depth + 1) for k, v in list(value.items())[:_MAX_ITEMS]}
        if len(value) > _MAX_ITEMS:
            fields["…"] = f"{len(value) - _MAX_ITEMS} more fields"
        return fields
    if isinstance(value, list | tuple | set | frozenset):
        items = [_bounded(v, limit, depth + 1) for v in list(value)[:_MAX_ITEMS]]
        if len(value) > _MAX_ITEMS:
            items.append(f"…[{len(value) - _MAX_ITEMS} more items]")
        return items
    return cut(scrub(repr(value)), limit)  # what the JSON renderer would print, bounded


def _redact_field(key: str, value: Any, limit: int, depth: int) -> Any:
    if value is not None and key.lower() in SENSITIVE_LOG_KEYS:
        return fingerprint(value)
    return _bounded(value, limit, depth)


def redact_log_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: hash the fields that carry user text, scrub and cut all the others.

    Runs after the exception renderer, so a rendered traceback (``exception``) is scrubbed too.
    """
    for key, value in list(event_dict.items()):
        if key in _TRACEBACK_KEYS and isinstance(value, str):
            event_dict[key] = keep_end(scrub(value), MAX_TRACEBACK_CHARS)
        else:
            event_dict[key] = _redact_field(key, value, MAX_LOG_FIELD_CHARS, 0)
    return event_dict
