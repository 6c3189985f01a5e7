"""What to curate: a folder, a glob, a list of URIs, or a CSV/Parquet manifest, on any fsspec storage."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
import pyarrow.csv
import pyarrow.parquet

from avsync_ray.errors import InputError
from avsync_ray.storage import find_paths, is_object_store, join_uri, uri_prefix


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


@dataclass(frozen=True)
class InputListing:
    sources: list[Source]
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
    """Every input video, sorted by URI, and what an input folder holds besides videos. A folder is searched
    recursively for ``extensions``; the label is the parent folder's name unless a manifest gives one. A path
    that does not exist is an error (a glob may match nothing)."""
    if isinstance(inputs, str) and inputs.endswith((".csv", ".parquet")):
        return InputListing(_unique(_manifest(inputs)), [])
    sources, skipped = [], []
    suffixes = tuple(e.lower() for e in extensions)
    for item in [inputs] if isinstance(inputs, str) else inputs:
        fs, path = fsspec.core.url_to_fs(item)
        prefix = uri_prefix(fs)
        if fs.isdir(path):
            root = path.rstrip("/")
            found = []
            for entry_path, kind in _entries(fs, root):
                video_suffix = entry_path.lower().endswith(suffixes)
                if entry_path.rstrip("/") == root:
                    continue
                if kind == "directory":
                    if video_suffix:
                        skipped.append(SkippedInput(f"{prefix}{entry_path}", "folder_with_video_suffix"))
                elif video_suffix:  # files, and broken links, which end in the ledger as not found
                    found.append(entry_path)
                else:
                    skipped.append(SkippedInput(f"{prefix}{entry_path}", "not_a_video"))
        else:
            root = path.rsplit("/", 1)[0] if "/" in path else ""
            if any(c in path for c in "*?["):
                found = fs.glob(path)
            elif fs.exists(path):
                found = [path]
            else:
                raise InputError(f"input {item}: no such file or folder")
        for found_path in found:
            relative = found_path[len(root) :].lstrip("/") if root and found_path.startswith(root) else found_path
            label = PurePosixPath(found_path).parent.name
            sources.append(Source(f"{prefix}{found_path}", source_id_for(relative), label))
    return InputListing(_unique(sources), skipped)


def _entries(fs, root: str) -> list[tuple[str, str]]:
    """(path, 'file' or 'directory') of everything under ``root``, sorted. On object stores, one listing of the
    keys (folders are the keys' prefixes), without the per-object details a detailed listing holds."""
    if is_object_store(fs):
        files = find_paths(fs, root)
        folders = {parent for file in files for parent in _parents(file, root)}
        return sorted([(file, "file") for file in files] + [(folder, "directory") for folder in folders])
    return sorted((entry_path, info["type"]) for entry_path, info in fs.find(root, withdirs=True, detail=True).items())


def _parents(path: str, root: str) -> list[str]:
    parts = path[len(root) :].strip("/").split("/")[:-1]
    return [f"{root}/{'/'.join(parts[: k + 1])}" for k in range(len(parts))]


def list_sources(inputs: str | list[str], extensions: list[str]) -> list[Source]:
    """The videos of :func:`list_inputs`."""
    return list_inputs(inputs, extensions).sources


def _unique(sources: list[Source]) -> list[Source]:
    unique = {source.uri: source for source in sources}
    ids = [source.source_id for source in unique.values()]
    if len(set(ids)) != len(ids):
        raise InputError("two inputs map to the same source id; give explicit ids in a manifest")
    return sorted(unique.values(), key=lambda source: source.uri)
