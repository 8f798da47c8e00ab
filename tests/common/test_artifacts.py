from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.common.artifacts import ArtifactNotFound, ArtifactStore


def test_local_store_round_trip(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    uri = store.write_bytes("datasets/tickets/v1/manifest.json", b"{}")
    assert uri.startswith("file://") and uri.endswith("datasets/tickets/v1/manifest.json")
    assert store.key_of(uri) == "datasets/tickets/v1/manifest.json"
    assert store.read_bytes("datasets/tickets/v1/manifest.json") == b"{}"
    assert store.exists("datasets/tickets/v1/manifest.json")
    assert store.list("datasets") == ["datasets/tickets/v1/manifest.json"]
    assert not list((tmp_path / "artifacts").rglob("*.tmp-*"))  # atomic write left no temp file


def test_directories_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "tokenizer").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "tokenizer" / "vocab.json").write_text("[]")
    store = ArtifactStore(str(tmp_path / "store"))
    store.put_dir(src, "models/m/run-1")
    out = store.get_dir("models/m/run-1", tmp_path / "copy")
    assert (out / "tokenizer" / "vocab.json").read_text() == "[]"


def test_missing_and_unsafe_keys(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(ArtifactNotFound):
        store.read_bytes("nope")
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.path("../etc/passwd")


def test_other_fsspec_backends(tmp_path: Path) -> None:
    store = ArtifactStore("memory://lmforge-test")
    uri = store.write_bytes("a/b.bin", b"\x00\x01")
    assert uri == "memory:///lmforge-test/a/b.bin" or uri.startswith("memory://")
    assert store.read_bytes("a/b.bin") == b"\x00\x01"
