"""What to curate: a folder, a glob, a list of URIs, or a CSV/Parquet manifest, on any fsspec storage."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
import pyarrow.csv
import pyarrow.parquet

from avsync_ray.storage import join_uri, uri_prefix


@dataclass(frozen=True)
class Source:
    uri: str
    source_id: str
    label: str


def source_id_for(relative: str) -> str:
    """A stable id without dots or underscores (keys are ``<id>_<start_ms>_<end_ms>``): a readable stem plus a
    short hash of the path relative to the input root, so equal stems in different folders stay distinct."""
    stem = re.sub(r"[^A-Za-z0-9-]+", "-", PurePosixPath(relative).stem).strip("-")[:48] or "video"
    return f"{stem}-{hashlib.sha1(relative.encode()).hexdigest()[:10]}"


def _manifest(uri: str) -> list[Source]:
    with fsspec.open(uri, "rb") as handle:
        table = pyarrow.parquet.read_table(handle) if uri.endswith(".parquet") else pyarrow.csv.read_csv(handle)
    rows = table.to_pylist()
    if not rows or "uri" not in rows[0]:
        raise ValueError(f"manifest {uri} needs a 'uri' column (and optionally 'label', 'id')")
    base = uri.rsplit("/", 1)[0]
    sources = []
    for row in rows:
        path = str(row["uri"])
        full = path if "://" in path or path.startswith("/") else join_uri(base, path)
        label = str(row.get("label") or PurePosixPath(path).parent.name)
        sources.append(Source(full, str(row.get("id") or source_id_for(path)), label))
    return sources


def list_sources(inputs: str | list[str], extensions: list[str]) -> list[Source]:
    """Every input video, sorted by URI. A folder is searched recursively for ``extensions``; the label is the
    parent folder's name unless a manifest gives one."""
    if isinstance(inputs, str) and inputs.endswith((".csv", ".parquet")):
        sources = _manifest(inputs)
    else:
        sources = []
        for item in [inputs] if isinstance(inputs, str) else inputs:
            fs, path = fsspec.core.url_to_fs(item)
            prefix = uri_prefix(fs)
            if fs.isdir(path):
                root = path.rstrip("/")
                found = [p for p in fs.find(root) if p.lower().endswith(tuple(extensions))]
            else:
                root = path.rsplit("/", 1)[0] if "/" in path else ""
                found = fs.glob(path) if any(c in path for c in "*?[") else [path]
            for found_path in found:
                relative = found_path[len(root) :].lstrip("/") if root and found_path.startswith(root) else found_path
                label = PurePosixPath(found_path).parent.name
                sources.append(Source(f"{prefix}{found_path}", source_id_for(relative), label))
    unique = {source.uri: source for source in sources}
    ids = [source.source_id for source in unique.values()]
    if len(set(ids)) != len(ids):
        raise ValueError("two inputs map to the same source id; give explicit ids in a manifest")
    return sorted(unique.values(), key=lambda source: source.uri)
