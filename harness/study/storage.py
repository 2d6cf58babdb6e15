"""Where a study's trials keep their checkpoints: Ray's ``storage_path``, on any pyarrow file system.

``--storage URI`` (or ``storage:`` in a profile) names it: a local path (the default is
``<results>/ray/<study>/train``, as before), a directory every node mounts, or an object store
(``s3://bucket/prefix``, ``gs://…``: whatever ``pyarrow.fs.FileSystem.from_uri`` resolves). Train
workers write checkpoints there; the study's process reads them back through the same file system
(never as a local path: on a cluster a checkpoint was written on another node) and deletes them
once the trial is recorded (``harness.study.disk``).

S3 credentials and region come from the standard chain on each node (``AWS_ACCESS_KEY_ID`` …,
``~/.aws``, an instance role). An S3-compatible server elsewhere than AWS is named by
``endpoint_override`` in the URI (``s3://bucket/prefix?endpoint_override=host:port&scheme=http``)
or by ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` in the study's environment.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

from harness.searchspace import ConfigError


@dataclasses.dataclass(frozen=True)
class Storage:
    """A storage root: ``filesystem`` and ``path`` inside it (no scheme), and the URI it came from."""

    uri: str
    filesystem: pafs.FileSystem
    path: str

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def exists(self, path: str) -> bool:
        return self.filesystem.get_file_info(path).type != pafs.FileType.NotFound

    def delete(self, path: str) -> None:
        """Remove the directory (or file) at ``path``; nothing there is not an error."""
        info = self.filesystem.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.filesystem.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.filesystem.delete_file(path)

    def size(self, path: str | None = None) -> int:
        """Bytes of every file under ``path`` (the root by default)."""
        path = self.path if path is None else path
        info = self.filesystem.get_file_info(path)
        if info.type == pafs.FileType.File:
            return info.size or 0
        if info.type != pafs.FileType.Directory:
            return 0
        files = self.filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
        return sum(f.size or 0 for f in files if f.type == pafs.FileType.File)

    def check_writable(self) -> None:
        """Create the root and write, read and delete a probe file there; ConfigError (one line) if any fails."""
        probe = self.join(f".probe-{uuid.uuid4().hex}")
        try:
            self.filesystem.create_dir(self.path, recursive=True)
            with self.filesystem.open_output_stream(probe) as out:
                out.write(b"ok")
            with self.filesystem.open_input_stream(probe) as inp:
                if inp.read() != b"ok":
                    raise OSError("the probe file read back differently")
            self.filesystem.delete_file(probe)
        except (OSError, ValueError) as exc:
            text = " ".join(str(exc).split())
            raise ConfigError(f"storage {self.uri} is not writable ({text[:200]})") from None


def _has_scheme(uri: str) -> bool:
    scheme = urlsplit(uri).scheme
    return len(scheme) > 1 and "://" in uri  # "C:\..." is a path, not a scheme


def _env_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3(uri: str) -> tuple[pafs.FileSystem, str]:
    """An S3 file system for ``uri``; an endpoint from the environment applies when the URI names none."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    endpoint = _env_endpoint()
    if "endpoint_override" in query or endpoint is None:
        return pafs.FileSystem.from_uri(uri)
    ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    kwargs = {k: v[-1] for k, v in query.items()}
    kwargs.update(endpoint_override=ep.netloc, scheme=ep.scheme or "https")
    if "region" not in kwargs and (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        kwargs["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs.pop("allow_bucket_creation", None)
    path = (parts.netloc + parts.path).rstrip("/")
    return pafs.S3FileSystem(**kwargs), path


def resolve_storage(uri: str | None, default: Path) -> Storage:
    """The Storage ``uri`` names (``default``, a local directory, when None). ConfigError: one line."""
    if uri is None or uri == "":
        path = Path(default).resolve()
        return Storage(str(path), pafs.LocalFileSystem(), str(path))
    if not _has_scheme(uri) or uri.startswith("file://"):
        local = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser().resolve()
        return Storage(uri, pafs.LocalFileSystem(), str(local))
    try:
        if urlsplit(uri).scheme in ("s3", "s3a"):
            fs, path = _s3(uri)
        else:
            fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"storage {uri}: {' '.join(str(exc).split())[:200]}") from None
    if not path.strip("/"):
        raise ConfigError(f"storage {uri}: name a bucket (and a prefix), e.g. s3://bucket/mor1e")
    return Storage(uri, fs, path.rstrip("/"))
