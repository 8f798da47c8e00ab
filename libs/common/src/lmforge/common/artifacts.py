"""The artifact store: datasets and model weights behind fsspec.

A local folder by default; ``s3://bucket/prefix`` (or any fsspec URL) in production. Keys are
``/``-separated paths relative to the store root. Local writes are atomic (temp file + rename),
so a reader never sees half a shard.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .settings import ArtifactSettings


class ArtifactNotFound(FileNotFoundError):
    pass


class ArtifactStore:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.fs: fsspec.AbstractFileSystem = fs
        self.local = isinstance(fs, LocalFileSystem)
        self.root = str(Path(root).resolve()) if self.local else root.rstrip("/")
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self.protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    @classmethod
    def from_settings(cls, settings: ArtifactSettings) -> ArtifactStore:
        return cls(settings.url, settings.storage_options)

    @property
    def url(self) -> str:
        """The store's root as a URL another process can open the same store with."""
        return self.root if self.local else f"{self.protocol}://{self.root}"

    def path(self, key: str) -> str:
        key = key.strip("/")
        if not key or ".." in key.split("/"):
            raise ValueError(f"invalid artifact key {key!r}")
        return f"{self.root}/{key}"

    @property
    def _uri_prefix(self) -> str:
        return f"file://{self.root}/" if self.local else f"{self.protocol}://{self.root}/"

    def uri(self, key: str) -> str:
        """A URL for ``key`` that any fsspec client understands."""
        return self._uri_prefix + self.path(key)[len(self.root) + 1 :]

    def key_of(self, uri: str) -> str:
        """The key of a URI produced by ``uri()`` on this store."""
        prefix = self._uri_prefix
        if not uri.startswith(prefix):
            raise ValueError(f"{uri} is not in this artifact store ({prefix})")
        return uri[len(prefix) :]

    def write_bytes(self, key: str, data: bytes) -> str:
        target = self.path(key)
        if self.local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, data)
        return self.uri(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(key)))
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"artifact {key!r} not found in {self.root}") from exc

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def list(self, prefix: str = "") -> list[str]:
        base = self.path(prefix) if prefix else self.root
        if not self.fs.exists(base):
            return []
        start = len(self.root) + 1
        return sorted(str(p)[start:] for p in self.fs.find(base))

    def put_dir(self, local_dir: Path, key: str) -> str:
        """Upload a local folder's files under ``key``."""
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                self.write_bytes(f"{key}/{path.relative_to(local_dir).as_posix()}", path.read_bytes())
        return self.uri(key)

    def get_dir(self, key: str, local_dir: Path) -> Path:
        """Download every file under ``key`` into ``local_dir``."""
        files = self.list(key)
        if not files:
            raise ArtifactNotFound(f"no artifacts under {key!r}")
        prefix = key.strip("/") + "/"
        for name in files:
            dest = Path(local_dir) / name[len(prefix) :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self.read_bytes(name))
        return Path(local_dir)
