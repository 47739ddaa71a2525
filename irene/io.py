"""Filesystem access for local paths and ``s3://bucket/prefix`` URIs.

Everything in irene that takes a path goes through this module, so a local directory and an
S3 prefix (AWS or any S3-compatible store such as MinIO or moto) behave the same.

The S3 endpoint is taken from ``IRENE_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL`` (e.g.
``http://127.0.0.1:5000``); credentials and region come from the usual AWS variables.
"""

from __future__ import annotations

import os
import posixpath
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

# Environment that S3 access depends on; forwarded to Ray workers/replicas that may not share
# the driver's environment.
S3_ENV_VARS = (
    "IRENE_S3_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


def s3_env() -> dict[str, str]:
    """The S3 settings of this process's environment that are set (``S3_ENV_VARS``), to pass
    on to Ray actors and workers."""
    return {k: os.environ[k] for k in S3_ENV_VARS if os.environ.get(k)}


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def s3_endpoint() -> str | None:
    return os.environ.get("IRENE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")


def s3_filesystem() -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem honouring a custom endpoint (http or https)."""
    endpoint = s3_endpoint()
    kwargs: dict = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "http"
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs["access_key"] = key
        kwargs["secret_key"] = secret
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)``; for S3 the path is ``bucket/key`` (no scheme)."""
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def join(base: str | os.PathLike, *parts: str) -> str:
    base = str(base)
    if is_s3(base):
        return "s3://" + posixpath.join(base[len("s3://") :].rstrip("/"), *parts)
    return os.path.join(base, *parts)


def basename(uri: str | os.PathLike) -> str:
    """The last path component of a local path or s3:// URI (trailing '/' ignored)."""
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def exists(uri: str | os.PathLike) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str | os.PathLike) -> None:
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(path, exist_ok=True)
    # S3 has no directories: keys are created on write.


def listdir(uri: str | os.PathLike) -> list[str]:
    """Base names directly under ``uri`` (sorted); empty if it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def delete(uri: str | os.PathLike) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


@contextmanager
def open_input(uri: str | os.PathLike):
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        yield f


@contextmanager
def open_output(uri: str | os.PathLike):
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with fs.open_output_stream(path) as f:
        yield f


def read_bytes(uri: str | os.PathLike) -> bytes:
    with open_input(uri) as f:
        return f.read()


def write_bytes(uri: str | os.PathLike, data: bytes, *more) -> None:
    """Write a whole object: ``data`` then each of ``more`` (bytes-like). Local writes go
    through a temp file + rename (atomic)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            for part in (data, *more):
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    with fs.open_output_stream(path) as f:  # an S3 PUT is atomic per object
        for part in (data, *more):
            f.write(part)


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Recursively copy a directory between any two locations (local or S3)."""
    src_fs, src_path = resolve(src)
    dst_fs, dst_path = resolve(dst)
    if isinstance(dst_fs, pafs.LocalFileSystem):
        os.makedirs(dst_path, exist_ok=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)
