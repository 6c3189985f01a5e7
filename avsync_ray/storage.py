"""Small fsspec helpers: any local path or URI (s3://, gs://, memory://) works the same way."""

from __future__ import annotations

import contextlib
import json
import tempfile
import uuid

import fsspec


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(uri: str):
    """(filesystem, path) of a URI."""
    return fsspec.core.url_to_fs(uri)


def uri_prefix(fs) -> str:
    """What turns a path of ``fs`` back into a URI: '' on the local disk, else ``<protocol>://``."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "" if protocol in ("file", "local") else f"{protocol}://"


@contextlib.contextmanager
def open_atomic(uri: str):
    """A binary write handle on a temporary name beside ``uri``, moved into place when the block ends without
    an error (removed when it raises), so readers never see a partial file: a rename on local disks,
    copy-then-delete on object stores, where the object appears whole anyway."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(temporary, "wb") as handle:
            yield handle
    except BaseException:
        if fs.exists(temporary):
            fs.rm(temporary)
        raise
    fs.mv(temporary, path)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    with open_atomic(uri) as handle:
        handle.write(data)


def write_json_atomic(uri: str, data) -> None:
    write_bytes_atomic(uri, json.dumps(data, indent=2, sort_keys=True).encode())


def read_json(uri: str):
    with fsspec.open(uri, "r") as handle:
        return json.load(handle)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Full URIs of the files directly in folder ``uri`` ending with ``suffix`` (sorted; [] if absent), listed afresh:
    a filesystem instance caches listings (s3fs, gcsfs), which other processes' writes make stale."""
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    return sorted(f"{uri_prefix(fs)}{p}" for p in fs.ls(path, detail=False) if p.endswith(suffix))


@contextlib.contextmanager
def local_copy(uri: str):
    """A local path for ``uri``: the file itself when local, else a temporary download (read once, used by
    every reader of the file, e.g. the shot detector and the decoder)."""
    fs, path = filesystem(uri)
    if not uri_prefix(fs):
        yield path
        return
    suffix = "." + path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
    with tempfile.TemporaryDirectory(prefix="avsync-src-") as folder:
        local = f"{folder}/source{suffix}"
        fs.get(path, local)
        yield local


@contextlib.contextmanager
def local_folder(uri: str):
    """A local path for folder ``uri``: the folder itself when local, else a temporary download of it."""
    fs, path = filesystem(uri)
    if not uri_prefix(fs):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="avsync-folder-") as folder:
        fs.get(path.rstrip("/") + "/", folder, recursive=True)
        yield folder


def remove(uri: str, recursive: bool = False) -> None:
    """Delete a file (or a folder and what it holds, with ``recursive``) if it exists."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)
