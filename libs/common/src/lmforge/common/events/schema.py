"""Export each event payload's JSON Schema to a folder (``make schemas`` writes ``docs/events/``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .payloads import EVENT_PAYLOADS, UpstreamRecord


def render_schemas() -> dict[str, str]:
    """File name -> JSON text, for every payload plus the upstream record format."""
    out: dict[str, str] = {}
    for payload in EVENT_PAYLOADS:
        schema = payload.model_json_schema()
        schema["$id"] = f"urn:lmforge:event:{payload.event_type}"
        schema["x-cloudevents-type"] = payload.event_type
        out[f"{payload.event_type}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    upstream = UpstreamRecord.model_json_schema()
    upstream["$id"] = "urn:lmforge:upstream-record.v1"
    out["upstream-record.v1.json"] = json.dumps(upstream, indent=2, sort_keys=True) + "\n"
    return out


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/events")):
        print(p)
