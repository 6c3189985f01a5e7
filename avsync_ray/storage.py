"""Small fsspec helpers: any local path or URI (s3://, gs://, memory://) works the same way.

Object stores are the normal target, and several processes write to the same folders at once, so every process
that imports this module talks to them alike:

- no listing cache: s3fs and gcsfs keep a folder's listing per filesystem instance and answer later listings
  (and ``exists``) from it, which after another process wrote is stale;
- throttling and dropped connections are weather, not failure: S3's ``503 SlowDown``, 5xx answers and connection
  resets are retried by botocore with exponential backoff (``BOTOCORE_RETRIES``; s3fs adds its own retries on top),
  and whole-object writes here are retried once more as a whole (:func:`retry_storage`);
- a single object PUT is already atomic (readers see the old object or the new one, never a part), so writes
  go straight to their name; only local disks (and other file systems) write a temporary name and rename it.

A user's own settings (``FSSPEC_S3``, ``FSSPEC_S3_...`` environment variables, fsspec config files) win over
these defaults.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import fsspec
import fsspec.asyn
import fsspec.config
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Protocols whose writes appear whole at the end of one request (or one completed multipart upload).
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "az", "adl", "memory"})
LISTING_CACHED = ("s3", "gs", "gcs", "abfs", "az")
BOTOCORE_RETRIES = {"max_attempts": 10, "mode": "standard"}
# The project's own retry of a whole-object write, after the client's retries gave up: attempts and first delay (s).
WRITE_ATTEMPTS, WRITE_BACKOFF_S = 4, 0.5
# errno values that s3fs and gcsfs give throttling and server-side errors after their own retries.
_TRANSIENT_ERRNO = frozenset({errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE})


def _configure_object_stores() -> None:
    for protocol in LISTING_CACHED:
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)
    fsspec.config.conf["s3"].setdefault("config_kwargs", {}).setdefault("retries", dict(BOTOCORE_RETRIES))


_configure_object_stores()


class StorageError(OSError):
    """A storage request that kept failing after every retry (throttling, an outage, a dropped connection): the
    same command again resumes where the job stopped."""


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(uri: str):
    """(filesystem, path) of a URI."""
    return fsspec.core.url_to_fs(uri)


def _protocol(fs) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def uri_prefix(fs) -> str:
    """What turns a path of ``fs`` back into a URI: '' on the local disk, else ``<protocol>://``."""
    protocol = _protocol(fs)
    return "" if protocol in ("file", "local") else f"{protocol}://"


def is_object_store(fs) -> bool:
    return _protocol(fs) in OBJECT_STORES


def is_transient(error: BaseException) -> bool:
    """A storage error worth retrying: throttling (503 SlowDown), a server error, a timeout or a dropped
    connection. A missing file, a denied permission or a bad request is not."""
    if isinstance(error, StorageError):
        return True
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNO:
        return True
    text = str(error)
    return any(marker in text for marker in ("SlowDown", "ServiceUnavailable", "InternalError", "Connection reset", "Server disconnected"))


def retry_storage(action: Callable[[], T], what: str, attempts: int = WRITE_ATTEMPTS, backoff_s: float = WRITE_BACKOFF_S) -> T:
    """``action()``, tried again with exponential backoff while it fails with a transient storage error; a
    :class:`StorageError` naming ``what`` when the last attempt fails too."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - classified below
            if not is_transient(error):
                raise
            if attempt == attempts - 1:
                raise StorageError(f"{what}: {error} (after {attempts} attempts)") from error
            logger.info("storage error on %s, retrying: %s", what, error)
            time.sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def open_atomic(uri: str):
    """A binary write handle whose bytes appear at ``uri`` all at once when the block ends without an error (and
    never when it raises), so readers never see a partial file. Object stores: the bytes are spooled to a local
    temporary file and uploaded as one object (one PUT, or one multipart upload that only shows when complete),
    retried as a whole on transient errors. Local disks and other file systems: a temporary name beside ``uri``,
    renamed into place."""
    fs, path = filesystem(uri)
    if is_object_store(fs):
        with tempfile.NamedTemporaryFile(prefix="avsync-upload-") as spool:
            yield spool
            spool.flush()
            retry_storage(lambda: fs.put_file(spool.name, path), f"writing {uri}")
        return
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
    """Write ``data`` as the whole file ``uri``: one PUT on object stores (retried as a whole on transient
    errors), a rename into place elsewhere."""
    fs, path = filesystem(uri)
    if is_object_store(fs):
        retry_storage(lambda: fs.pipe_file(path, data), f"writing {uri}")
        return
    with open_atomic(uri) as handle:
        handle.write(data)


def write_json_atomic(uri: str, data) -> None:
    write_bytes_atomic(uri, json.dumps(data, indent=2, sort_keys=True).encode())


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_parquet(uri: str, table: pa.Table) -> None:
    """``table`` as the Parquet file ``uri`` (one PUT on object stores)."""
    write_bytes_atomic(uri, parquet_bytes(table))


PARQUET_ROW_GROUP = 8192  # rows per row group of a Parquet file written a batch at a time (a few MB held)


def fixed_batches(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The rows of ``tables`` again, in tables of exactly ``rows`` rows (the last one fewer): what comes out depends
    on the rows alone, never on how they came batched."""
    pending, count = [], 0
    for table in tables:
        pending.append(table)
        count += table.num_rows
        while count >= rows:
            joined = pa.concat_tables(pending)
            yield joined.slice(0, rows)
            pending, count = [joined.slice(rows)], count - rows
    if count:
        yield pa.concat_tables(pending)


def write_parquet_batches(uri: str, schema: pa.Schema, tables: Iterable[pa.Table], rows: int = PARQUET_ROW_GROUP) -> None:
    """Parquet of ``tables`` (read one at a time) in row groups of exactly ``rows`` rows, so that the file's bytes
    depend on its rows alone; the file appears at ``uri`` whole once every table is in (:func:`open_atomic`: one
    upload on object stores)."""
    with open_atomic(uri) as handle, pq.ParquetWriter(handle, schema) as writer:
        for group in fixed_batches(tables, rows):
            writer.write_table(group, row_group_size=rows)


def read_json(uri: str):
    with fsspec.open(uri, "r") as handle:
        return json.load(handle)


def read_bytes(uri: str, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of ``uri`` (``[start, end)`` when given: one ranged GET on object stores)."""
    fs, path = filesystem(uri)
    return fs.cat_file(path, start=start, end=end)


def read_ranges(uris: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
    """Several byte ranges at once (concurrent requests on object stores), in order."""
    if not uris:
        return []
    fs, _ = filesystem(uris[0])
    return fs.cat_ranges([filesystem(uri)[1] for uri in uris], starts, ends)


def read_many(uris: list[str]) -> list[bytes]:
    """The bytes of several files at once (concurrent requests on object stores), in order."""
    if not uris:
        return []
    fs, _ = filesystem(uris[0])
    paths = [filesystem(uri)[1] for uri in uris]
    # s3fs asks for each object's size first (a HEAD) unless told to read it in one request.
    contents = fs.cat(paths, max_concurrency=1) if _protocol(fs) in ("s3", "s3a") else fs.cat(paths)
    return [contents[path] for path in paths]


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


LIST_PAGE = 1000  # keys per listing request on S3 (its most)


def iter_paths(fs, path: str) -> Iterator[list[str]]:
    """The paths of ``fs`` of every file under ``path`` (none when absent), a page at a time. On S3, the
    listing's pages (one request per 1,000 keys), keeping only the keys: s3fs's ``find`` holds every object's
    details (about 1 KB each) until the whole listing is in. Elsewhere, one page."""
    if _protocol(fs) not in ("s3", "s3a"):
        yield fs.find(path)
        return
    bucket, _, prefix = fs._strip_protocol(path).partition("/")
    request = {"Bucket": bucket, "Prefix": f"{prefix.rstrip('/')}/" if prefix else "", "MaxKeys": LIST_PAGE}

    async def page(token: str | None) -> dict:
        await fs.set_session()
        return await fs.s3.list_objects_v2(**request, **({"ContinuationToken": token} if token else {}))

    token = None
    while True:
        listed = fsspec.asyn.sync(fs.loop, page, token)
        yield [f"{bucket}/{item['Key']}" for item in listed.get("Contents", ()) if not item["Key"].endswith("/")]
        token = listed.get("NextContinuationToken")
        if not listed.get("IsTruncated") or not token:
            return


def find_paths(fs, path: str) -> list[str]:
    """The paths of ``fs`` of every file under ``path`` ([] when absent): :func:`iter_paths`' pages joined."""
    return [found for page in iter_paths(fs, path) for found in page]


def find_files(uri: str, suffix: str = "") -> list[str]:
    """Full URIs of the files anywhere under folder ``uri`` ending with ``suffix`` (sorted; [] if absent): one
    listing of the whole tree (on object stores, one request per 1,000 keys)."""
    fs, path = filesystem(uri)
    return sorted(f"{uri_prefix(fs)}{p}" for p in find_paths(fs, path) if p.endswith(suffix))


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
        fs.get_file(path, local)  # one GET, no listing
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
    """Delete a file (or a folder and what it holds, with ``recursive``) if it exists. A folder on an object
    store goes a listing page at a time (its keys never all held, nor their details)."""
    fs, path = filesystem(uri)
    if recursive and is_object_store(fs):
        for page in iter_paths(fs, path):
            remove_many([f"{uri_prefix(fs)}{found}" for found in page])
        return
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def remove_many(uris: Iterable[str]) -> None:
    """Delete files that may or may not exist (object stores: one request per 1,000 keys)."""
    uris = list(uris)
    if not uris:
        return
    fs, _ = filesystem(uris[0])
    paths = [filesystem(uri)[1] for uri in uris]
    if is_object_store(fs):
        retry_storage(lambda: fs.rm(paths), f"removing {len(paths)} files under {os.path.commonprefix(uris)}")
        return
    for path in paths:
        if fs.exists(path):
            fs.rm(path)
