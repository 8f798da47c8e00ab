"""The artifact store: datasets and model weights behind fsspec.

A local folder by default; ``s3://bucket/prefix`` (or any fsspec URL) in production, with the
backend's options in ``storage_options`` (for S3: ``endpoint_url``, ``key``, ``secret``,
``client_kwargs``). Keys are ``/``-separated paths relative to the store root.

- Local writes are atomic (temp file + rename), so a reader never sees half a shard. Object
  stores get the same guarantee from the PUT itself.
- Copies stream: files go up and down with fsspec ``put``/``get`` (chunked, multipart on S3), and
  never pass through memory whole. ``read_bytes``/``write_bytes`` are for small objects
  (manifests); ``open`` streams a large one.
- Listings are read fresh: other processes (the trainer's subprocess, other replicas) write to
  the same store, so a cached listing would hide their files.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .settings import ArtifactSettings

_COPY_CHUNK = 4 * 1024 * 1024


class ArtifactNotFound(FileNotFoundError):
    pass


class ArtifactStore:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        # Kept so another process can open the same store (the trainer's subprocess); may hold
        # credentials, so it is never part of repr() or a log line.
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        fs, root = fsspec.core.url_to_fs(url, **self.storage_options)
        self.fs: fsspec.AbstractFileSystem = fs
        self.local = isinstance(fs, LocalFileSystem)
        self.root = str(Path(root).resolve()) if self.local else root.rstrip("/")
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self.protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    @classmethod
    def from_settings(cls, settings: ArtifactSettings) -> ArtifactStore:
        return cls(settings.url, settings.storage_options)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

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

    # -- small objects --------------------------------------------------------------------

    def write_bytes(self, key: str, data: bytes) -> str:
        target = self.path(key)
        if self.local:
            with _atomic_local(Path(target)) as f:
                f.write(data)
        else:
            self.fs.pipe_file(target, data)
        return self.uri(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(key)))
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"artifact {key!r} not found in {self.url}") from exc

    @contextmanager
    def open(self, key: str) -> Iterator[IO[bytes]]:
        """A seekable binary reader that fetches ``key`` in blocks (Parquet readers use this)."""
        try:
            f = self.fs.open(self.path(key), "rb")
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"artifact {key!r} not found in {self.url}") from exc
        with f:
            yield f

    def exists(self, key: str) -> bool:
        path = self.path(key)
        self.fs.invalidate_cache(path)
        return bool(self.fs.exists(path))

    def list(self, prefix: str = "") -> list[str]:
        base = self.path(prefix) if prefix else self.root
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        start = len(self.root) + 1
        names = (str(p)[start:] for p in self.fs.find(base))
        # A local writer's temp file (``<name>.tmp-<hex>``) is not an artifact yet.
        return sorted(n for n in names if not (self.local and ".tmp-" in n.rsplit("/", 1)[-1]))

    # -- files and folders (streamed) -----------------------------------------------------

    def get_file(self, key: str, local_path: Path) -> Path:
        """Download ``key`` into ``local_path`` (temp file + rename), streamed."""
        try:
            self._get([(self.path(key), Path(local_path))])
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"artifact {key!r} not found in {self.url}") from exc
        return Path(local_path)

    def put_file(self, local_path: Path, key: str) -> str:
        """Upload one local file as ``key``, streamed (a local store replaces it atomically)."""
        self._put([(Path(local_path), self.path(key))])
        return self.uri(key)

    def put_dir(self, local_dir: Path, key: str) -> str:
        """Upload a local folder's files under ``key``."""
        local_dir = Path(local_dir)
        files = [p for p in sorted(local_dir.rglob("*")) if p.is_file()]
        self._put([(p, self.path(f"{key}/{p.relative_to(local_dir).as_posix()}")) for p in files])
        return self.uri(key)

    def get_dir(self, key: str, local_dir: Path) -> Path:
        """Download every file under ``key`` into ``local_dir``."""
        files = self.list(key)
        if not files:
            raise ArtifactNotFound(f"no artifacts under {key!r}")
        prefix = key.strip("/") + "/"
        self._get([(self.path(name), Path(local_dir) / name[len(prefix) :]) for name in files])
        return Path(local_dir)

    def _put(self, pairs: Sequence[tuple[Path, str]]) -> None:
        if self.local:
            for src, target in pairs:
                with open(src, "rb") as reader, _atomic_local(Path(target)) as writer:
                    shutil.copyfileobj(reader, writer, _COPY_CHUNK)
        elif pairs:
            # One call for the whole batch: async backends (s3fs) upload the files concurrently.
            self.fs.put([str(src) for src, _ in pairs], [target for _, target in pairs])

    def _get(self, pairs: Sequence[tuple[str, Path]]) -> None:
        temps: list[Path] = []
        for _, dest in pairs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            temps.append(dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex}"))
        try:
            if self.local:
                for (src, _), tmp in zip(pairs, temps, strict=True):
                    shutil.copyfile(src, tmp)
            elif pairs:
                self.fs.get([src for src, _ in pairs], [str(t) for t in temps])
            for (_, dest), tmp in zip(pairs, temps, strict=True):
                os.replace(tmp, dest)
        finally:
            for tmp in temps:
                tmp.unlink(missing_ok=True)


@contextmanager
def _atomic_local(target: Path) -> Iterator[IO[bytes]]:
    """Write ``target`` through a temp file in its folder, fsync, then rename over it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
