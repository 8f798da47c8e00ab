"""One name pattern, quoted URL segments, and internal details kept out of public text."""

from __future__ import annotations

import re

import pytest
from pydantic import TypeAdapter, ValidationError

from lmforge.common.http import public_text
from lmforge.common.names import NAME_PATTERN, AliasName, DatasetName, ModelReference, VersionNumber, url_path


def test_url_path_quotes_every_segment() -> None:
    assert url_path("datasets", "../stats?x=", "versions", 3) == "/datasets/..%2Fstats%3Fx%3D/versions/3"
    assert url_path("datasets", "a\x00\nb") == "/datasets/a%00%0Ab"
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError, match="not a path segment"):
            url_path("datasets", bad)


@pytest.mark.parametrize("name", ["crm", "support-tickets", "v1.2_x", "0", "a" * 100])
def test_names_that_fit(name: str) -> None:
    assert TypeAdapter(DatasetName).validate_python(name) == name
    assert re.fullmatch(NAME_PATTERN.strip("^$"), name)


@pytest.mark.parametrize("name", ["", "Tickets", "-x", ".x", "a/b", "a b", "a\n", "a" * 101, "é", "a\x00"])
def test_names_that_do_not(name: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(DatasetName).validate_python(name)


def test_aliases_model_references_and_versions() -> None:
    assert TypeAdapter(AliasName).validate_python("production") == "production"
    with pytest.raises(ValidationError):
        TypeAdapter(AliasName).validate_python("a" * 33)
    ref = TypeAdapter(ModelReference)
    assert ref.validate_python("support@canary") == "support@canary"
    for bad in ("support@", "@canary", "a@b@c", "Support"):
        with pytest.raises(ValidationError):
            ref.validate_python(bad)
    version = TypeAdapter(VersionNumber)
    assert version.validate_python(2**31 - 1) == 2**31 - 1
    for bad in (0, -1, 2**31, 1380715308765197893632):
        with pytest.raises(ValidationError):
            version.validate_python(bad)


def test_public_text_keeps_the_reason_and_drops_paths_hosts_and_tracebacks() -> None:
    trace = (
        "Traceback (most recent call last):\n"
        '  File "/srv/lmforge/train.py", line 3, in main\n'
        "    raise FileNotFoundError(path)\n"
        "FileNotFoundError: file:///var/lmforge/artifacts/datasets/t/v1/manifest.json"
    )
    assert public_text(trace) == "FileNotFoundError: <internal>"
    assert public_text("triton at 127.0.0.1:8000 refused, see http://triton:8000/v2") == (
        "triton at <internal> refused, see <internal>"
    )
    assert public_text("val_perplexity 3.2 above 2.5 (1/2 evals)") == "val_perplexity 3.2 above 2.5 (1/2 evals)"
    assert public_text(None) is None
    assert len(public_text("x" * 1000) or "") == 300
