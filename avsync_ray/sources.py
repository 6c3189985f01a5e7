"""What to curate: a folder, a glob, a list of URIs, or a CSV/Parquet manifest, on any fsspec storage."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.parquet

from avsync_ray.errors import InputError
from avsync_ray.storage import is_object_store, iter_paths, join_uri, uri_prefix


@dataclass(frozen=True)
class Source:
    uri: str
    source_id: str
    label: str


@dataclass(frozen=True)
class SkippedInput:
    """An entry of an input folder that is not a video to curate, and why (reported, never silently dropped)."""

    uri: str
    reason: str  # "not_a_video" (another extension), "folder_with_video_suffix"


# The listed videos, a row each, sorted by URI.
SOURCE_SCHEMA = pa.schema([("uri", pa.string()), ("source_id", pa.string()), ("label", pa.string())])


@dataclass(frozen=True)
class InputListing:
    sources: pa.Table  # SOURCE_SCHEMA: Arrow columns, never a Python object per video
    skipped: list[SkippedInput]


def source_id_for(relative: str) -> str:
    """A stable id without dots or underscores (keys are ``<id>_<start_ms>_<end_ms>``): a readable stem plus a
    short hash of the path relative to the input root, so equal stems in different folders stay distinct."""
    stem = re.sub(r"[^A-Za-z0-9-]+", "-", PurePosixPath(relative).stem).strip("-")[:48] or "video"
    return f"{stem}-{hashlib.sha1(relative.encode()).hexdigest()[:10]}"


def _manifest(uri: str) -> list[Source]:
    with fsspec.open(uri, "rb") as handle:
        table = pyarrow.parquet.read_table(handle) if uri.endswith(".parquet") else pyarrow.csv.read_csv(handle)
    if "uri" not in table.column_names:
        raise InputError(f"manifest {uri} needs a 'uri' column (and optionally 'label', 'id'); its columns are {table.column_names}")
    rows = table.to_pylist()
    if not rows:
        raise InputError(f"manifest {uri} lists no videos (it has a header and no rows)")
    base = uri.rsplit("/", 1)[0]
    sources = []
    for row in rows:
        path = str(row["uri"])
        full = path if "://" in path or path.startswith("/") else join_uri(base, path)
        label = str(row.get("label") or PurePosixPath(path).parent.name)
        sources.append(Source(full, str(row.get("id") or source_id_for(path)), label))
    return sources


def list_inputs(inputs: str | list[str], extensions: list[str]) -> InputListing:
    """Every input video (:data:`SOURCE_SCHEMA`, sorted by URI), and what an input folder holds besides videos. A
    folder is searched recursively for ``extensions``, page by page of its listing into Arrow columns; the label
    is the parent folder's name unless a manifest gives one. A path that does not exist is an error (a glob may
    match nothing)."""
    if isinstance(inputs, str) and inputs.endswith((".csv", ".parquet")):
        return InputListing(_unique([_table(_manifest(inputs))]), [])
    tables, skipped = [], []
    suffixes = tuple(e.lower() for e in extensions)
    for item in [inputs] if isinstance(inputs, str) else inputs:
        fs, path = fsspec.core.url_to_fs(item)
        prefix = uri_prefix(fs)
        if fs.isdir(path):
            root, not_videos = path.rstrip("/"), set()
            for files, folders in _pages(fs, root):
                not_videos.update(SkippedInput(f"{prefix}{folder}", "folder_with_video_suffix") for folder in folders if folder.lower().endswith(suffixes))
                not_videos.update(SkippedInput(f"{prefix}{file}", "not_a_video") for file in files if not file.lower().endswith(suffixes))
                # files, and broken links, which end in the ledger as not found
                tables.append(_listed([file for file in files if file.lower().endswith(suffixes)], prefix, root))
            skipped += sorted(not_videos, key=lambda entry: entry.uri)
        else:
            root = path.rsplit("/", 1)[0] if "/" in path else ""
            if any(c in path for c in "*?["):
                found = fs.glob(path)
            elif fs.exists(path):
                found = [path]
            else:
                raise InputError(f"input {item}: no such file or folder")
            tables.append(_listed(found, prefix, root))
    return InputListing(_unique(tables), skipped)


def _listed(paths: list[str], prefix: str, root: str) -> pa.Table:
    """Found video files as sources (ids from their path relative to ``root``)."""
    sources = []
    for found in paths:
        relative = found[len(root) :].lstrip("/") if root and found.startswith(root) else found
        sources.append(Source(f"{prefix}{found}", source_id_for(relative), PurePosixPath(found).parent.name))
    return _table(sources)


def _table(sources: list[Source]) -> pa.Table:
    return pa.table({name: [getattr(source, name) for source in sources] for name in SOURCE_SCHEMA.names}, schema=SOURCE_SCHEMA)


def _pages(fs, root: str) -> Iterator[tuple[list[str], list[str]]]:
    """(file paths, folder paths) under ``root``, a page of the listing at a time (a folder may come again in a
    later page). On object stores, the keys (folders are the keys' prefixes) without the per-object details a
    detailed listing holds; elsewhere, a folder at a time."""
    if is_object_store(fs):
        for page in iter_paths(fs, root):
            files = [file for file in page if file.rstrip("/") != root]
            yield files, sorted({parent for file in files for parent in _parents(file, root)})
        return
    for folder, folders, files in fs.walk(root):
        yield [f"{folder}/{name}" for name in files], [f"{folder}/{name}" for name in folders]


def _parents(path: str, root: str) -> list[str]:
    parts = path[len(root) :].strip("/").split("/")[:-1]
    return [f"{root}/{'/'.join(parts[: k + 1])}" for k in range(len(parts))]


def list_sources(inputs: str | list[str], extensions: list[str]) -> list[Source]:
    """The videos of :func:`list_inputs`, as :class:`Source` objects (for listings small enough to hold so)."""
    return [Source(**row) for row in list_inputs(inputs, extensions).sources.to_pylist()]


def _unique(tables: list[pa.Table]) -> pa.Table:
    """The sources sorted by URI, a URI listed twice once (its last listing); two URIs may not share an id."""
    table = pa.concat_tables(tables) if tables else SOURCE_SCHEMA.empty_table()
    if not _strictly_increasing(table["uri"]):  # one folder on an object store is listed in key order already
        table = table.append_column("_order", pa.array(np.arange(table.num_rows))).sort_by([("uri", "ascending"), ("_order", "ascending")])
        uris = table["uri"].combine_chunks()
        last = np.r_[pc.not_equal(uris.slice(0, len(uris) - 1), uris.slice(1)).to_numpy(zero_copy_only=False), True]
        table = table.filter(pa.array(last, pa.bool_())).drop_columns(["_order"])
    if pc.count_distinct(table["source_id"]).as_py() != table.num_rows:
        raise InputError("two inputs map to the same source id; give explicit ids in a manifest")
    return table


def _strictly_increasing(values: pa.ChunkedArray) -> bool:
    """Each value above the one before it (so sorted, and none twice)."""
    return len(values) < 2 or pc.all(pc.less(values.slice(0, len(values) - 1), values.slice(1))).as_py()
