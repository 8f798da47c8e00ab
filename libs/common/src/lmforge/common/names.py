"""Names and numbers in the public contract: one pattern each, declared once, used by every service.

A name (dataset, model, alias, record source) is lowercase ASCII letters, digits, ``.``, ``_`` and
``-``, starting with a letter or digit. Such a name is safe as a URL path segment, a folder in the
artifact store, a Kafka key and a Triton model name, and it never needs escaping in a log line.
Aliases are shorter. Version numbers are positive and fit a 32-bit signed integer column.

The ``Annotated`` types carry the constraint into pydantic models, FastAPI path and query
parameters, and so into each service's OpenAPI schema: a bad name is a 422 at the edge, before
anything else sees it.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from pydantic import Field, StringConstraints

NAME_BODY = r"[a-z0-9][a-z0-9_.-]{0,99}"
_ALIAS = r"[a-z0-9][a-z0-9_.-]{0,31}"

NAME_PATTERN = rf"^{NAME_BODY}$"
ALIAS_PATTERN = rf"^{_ALIAS}$"
# ``name`` or ``name@alias``: how a completion request names the model it wants.
MODEL_REFERENCE_PATTERN = rf"^{NAME_BODY}(@{_ALIAS})?$"
# Training job ids are made by the gateway: ``job-`` and 12 hex digits.
JOB_ID_PATTERN = r"^job-[0-9a-f]{12}$"

# API key ids: the ``<id>`` of ``lmf_<id>_<secret>``.
API_KEY_ID_PATTERN = r"^[A-Za-z0-9-]{1,32}$"

MAX_INT32 = 2**31 - 1

# Free text that every store takes (PostgreSQL refuses NUL in text and JSON): no NUL character.
NO_NUL_PATTERN = r"^[^\x00]*$"

_NAME_RULE = "lowercase letters, digits, '.', '_' and '-'; starts with a letter or digit"

DatasetName = Annotated[
    str,
    StringConstraints(pattern=NAME_PATTERN),
    Field(description=f"A dataset name: 1-100 characters, {_NAME_RULE}.", examples=["support-tickets"]),
]
ModelName = Annotated[
    str,
    StringConstraints(pattern=NAME_PATTERN),
    Field(description=f"A model name: 1-100 characters, {_NAME_RULE}.", examples=["support-assistant"]),
]
SourceName = Annotated[
    str,
    StringConstraints(pattern=NAME_PATTERN),
    Field(description=f"A record source (business system): 1-100 characters, {_NAME_RULE}.", examples=["crm"]),
]
AliasName = Annotated[
    str,
    StringConstraints(pattern=ALIAS_PATTERN),
    Field(description=f"An alias: 1-32 characters, {_NAME_RULE}.", examples=["production"]),
]
ModelReference = Annotated[
    str,
    StringConstraints(pattern=MODEL_REFERENCE_PATTERN),
    Field(
        description="A model name, optionally with an alias: `name` or `name@alias` (default alias: production).",
        examples=["support-assistant", "support-assistant@canary"],
    ),
]
JobId = Annotated[
    str,
    StringConstraints(pattern=JOB_ID_PATTERN),
    Field(description="A training job id, as returned when the job was requested.", examples=["job-0123456789ab"]),
]
VersionNumber = Annotated[int, Field(ge=1, le=MAX_INT32, description="A version number, from 1.")]


def url_path(*segments: str | int) -> str:
    """An internal URL path built from segments, each quoted on its own (``/`` and ``?`` included).

    User input is never pasted into a URL: ``url_path("datasets", "a/../stats?x=")`` is
    ``/datasets/a%2F..%2Fstats%3Fx%3D``, one segment that names nothing else.
    """
    parts = []
    for segment in segments:
        text = str(segment)
        if text in ("", ".", ".."):
            raise ValueError(f"not a path segment: {text!r}")
        parts.append(quote(text, safe=""))
    return "/" + "/".join(parts)
