"""The artifact store on a local folder, in memory, and on a real S3-compatible server (moto_server)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.common.artifacts import ArtifactNotFound, ArtifactStore
from lmforge.devstack.servers import S3Server


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


def test_copies_stream_and_never_read_whole_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """put_dir/get_dir go through file objects: a whole-file read (read_bytes, cat) would fail here."""
    src = tmp_path / "model"
    src.mkdir()
    payload = bytes(range(256)) * 40_000  # 10 MB, more than one copy chunk
    (src / "weights.bin").write_bytes(payload)
    store = ArtifactStore(str(tmp_path / "store"))

    def refuse(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("a copy read a whole file into memory")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setattr(ArtifactStore, "read_bytes", refuse)
    monkeypatch.setattr(store.fs, "cat_file", refuse)
    store.put_dir(src, "models/big/run-1")
    out = store.get_dir("models/big/run-1", tmp_path / "copy")
    monkeypatch.undo()
    assert (out / "weights.bin").read_bytes() == payload
    assert not list((tmp_path / "store").rglob("*.tmp-*")) and not list(out.rglob("*.tmp-*"))


def test_local_temp_files_are_not_listed(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("d/a.parquet", b"x")
    (tmp_path / "d" / "b.parquet.tmp-0123abcd").write_bytes(b"half")  # another writer, mid-write
    assert store.list("d") == ["d/a.parquet"]


def s3_store(s3: S3Server, unique: str, prefix: str = "lmforge") -> ArtifactStore:
    bucket = s3.create_bucket(f"artifacts-{unique}")
    return ArtifactStore(f"{bucket}/{prefix}", s3.storage_options)


def test_s3_store_round_trip(s3_server: S3Server, unique: str, tmp_path: Path) -> None:
    store = s3_store(s3_server, unique)
    assert store.url == f"s3://artifacts-{unique}/lmforge"
    assert "secret" not in repr(store) and s3_server.secret_key not in repr(store)
    uri = store.write_bytes("datasets/tickets/v1/manifest.json", b'{"v": 1}')
    assert uri == f"s3://artifacts-{unique}/lmforge/datasets/tickets/v1/manifest.json"
    assert store.key_of(uri) == "datasets/tickets/v1/manifest.json"
    assert store.read_bytes("datasets/tickets/v1/manifest.json") == b'{"v": 1}'
    assert store.exists("datasets/tickets/v1/manifest.json")
    assert not store.exists("datasets/tickets/v2/manifest.json")
    store.write_bytes("datasets/tickets2/v1/manifest.json", b"{}")
    assert store.list("datasets/tickets") == ["datasets/tickets/v1/manifest.json"]  # not tickets2
    assert store.list("nothing/here") == []
    with store.open("datasets/tickets/v1/manifest.json") as f:
        assert f.read(4) == b'{"v"'
    with pytest.raises(ArtifactNotFound):
        store.read_bytes("datasets/none.json")
    with pytest.raises(ArtifactNotFound):
        store.get_file("datasets/none.json", tmp_path / "none.json")


def test_s3_directories_round_trip(s3_server: S3Server, unique: str, tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "tokenizer").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "tokenizer" / "vocab.json").write_text("[]")
    weights = bytes(range(256)) * 30_000  # 7.7 MB: s3fs uploads it in parts
    (src / "model.safetensors").write_bytes(weights)
    store = s3_store(s3_server, unique)
    uri = store.put_dir(src, "models/m/run-1")
    assert uri == f"s3://artifacts-{unique}/lmforge/models/m/run-1"
    assert store.list("models/m/run-1") == [
        "models/m/run-1/config.json",
        "models/m/run-1/model.safetensors",
        "models/m/run-1/tokenizer/vocab.json",
    ]
    out = store.get_dir("models/m/run-1", tmp_path / "copy")
    assert (out / "tokenizer" / "vocab.json").read_text() == "[]"
    assert (out / "model.safetensors").read_bytes() == weights
    assert not list(out.rglob("*.tmp-*"))
    single = store.get_file("models/m/run-1/config.json", tmp_path / "single" / "config.json")
    assert single.read_text() == "{}"
    with pytest.raises(ArtifactNotFound):
        store.get_dir("models/m/run-2", tmp_path / "copy2")


def test_s3_listings_see_writes_from_other_processes(s3_server: S3Server, unique: str) -> None:
    """The trainer's subprocess writes a model while the service holds a listing: no stale cache."""
    store = s3_store(s3_server, unique)
    store.write_bytes("models/m/run-1/config.json", b"{}")
    assert store.list("models/m") == ["models/m/run-1/config.json"]
    assert not store.exists("models/m/run-2/config.json")
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from lmforge.common.artifacts import ArtifactStore; "
            "s = ArtifactStore(sys.argv[1], json.loads(sys.argv[2])); "
            "s.write_bytes('models/m/run-2/config.json', b'{}')",
            store.url,
            json.dumps(s3_server.storage_options),
        ],
        capture_output=True,
        text=True,
    )
    assert other.returncode == 0, other.stderr
    assert store.exists("models/m/run-2/config.json")
    assert store.list("models/m") == ["models/m/run-1/config.json", "models/m/run-2/config.json"]


def test_s3_storage_options_from_the_environment(
    s3_server: S3Server, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deployments set the options as JSON; nested values (client_kwargs) survive."""
    from lmforge.trainer.settings import TrainerSettings

    bucket = s3_server.create_bucket(f"artifacts-{unique}")
    monkeypatch.setenv("LMFORGE_TRAINER_ARTIFACTS__URL", f"{bucket}/env")
    monkeypatch.setenv("LMFORGE_TRAINER_ARTIFACTS__STORAGE_OPTIONS", json.dumps(s3_server.storage_options))
    settings = TrainerSettings()
    assert settings.artifacts.storage_options["client_kwargs"] == {"region_name": s3_server.region}
    store = ArtifactStore.from_settings(settings.artifacts)
    store.write_bytes("a.txt", b"a")
    assert ArtifactStore(f"{bucket}/env", s3_server.storage_options).read_bytes("a.txt") == b"a"
